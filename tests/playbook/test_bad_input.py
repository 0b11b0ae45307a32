"""Bad input stops site.yml in its preflight play, before any host changes, with a message
naming the variable (and the group). Runs the real playbook against this machine with a
local connection in check mode, so that even a check that failed to stop it changes nothing."""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

GOOD_GROUP = {"name": "imports", "command": "/usr/local/bin/brokerfleet-worker"}


MISSING = object()


def run_site(tmp_path, **variables):
    variables.setdefault("broker_password", "not-a-real-secret")
    variables = {k: v for k, v in variables.items() if v is not MISSING}
    variables.setdefault("worker_groups", [GOOD_GROUP])
    variables.setdefault("fleet_cpus", 2)
    inventory = {
        "all": {
            "children": {
                "brokers": {"hosts": {"testhost": None}},
                "workers": {"hosts": {"testhost": None}},
            },
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": "/usr/bin/python3",
                **variables,
            },
        }
    }
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(inventory))
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="false", ANSIBLE_NOCOLOR="true")
    result = subprocess.run(
        ["ansible-playbook", "--check", "-i", str(path), "site.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"broker_kind": "kafka"}, "broker_kind"),
        ({"broker_password": MISSING}, "broker_password"),
        ({"broker_password": ""}, "broker_password"),
        ({"worker_groups": [{**GOOD_GROUP, "name": "Imports"}]}, "(name 'Imports'): name must"),
        ({"worker_groups": [GOOD_GROUP, GOOD_GROUP]}, "(name 'imports'): name is used by an"),
        ({"worker_groups": [{**GOOD_GROUP, "weight": 0}]}, "(name 'imports'): weight must be"),
        ({"worker_groups": [{**GOOD_GROUP, "min": 3, "max": 2}]}, "max (2) must be >= min (3)"),
        ({"worker_groups": [{"name": "imports"}]}, "command"),
        ({"worker_groups": [{**GOOD_GROUP, "min": 9}]}, "ask for 9 processes at their min"),
        ({"worker_groups": [{**GOOD_GROUP, "importance": 7}]}, "importance"),
        ({"workers_per_cpu": "many"}, "workers_per_cpu"),
        (
            {"worker_groups": [{**GOOD_GROUP, "priority_levels": {"urgent": 1}}]},
            "(name 'imports'): priority_levels: unknown level 'urgent'",
        ),
        (
            {"worker_groups": [{**GOOD_GROUP, "priority_levels": {"high": 0, "low": 0}}]},
            "priority_levels: at least one level needs a weight > 0",
        ),
        ({"broker_kind": "activemq", "activemq_heap_mb": 10**8}, "activemq_heap_mb"),
        ({"broker_kind": "activemq", "broker_stomp_port": 61616}, "broker_stomp_port"),
        ({"fleet_checks_load_high": 5}, "fleet_checks_load_high (5) must be within 0.1-4"),
        ({"fleet_checks_load_low": 0.9}, "fleet_checks_load_low (0.9) above 0 and below it"),
        ({"fleet_checks_minute": "61"}, "fleet_checks_minute (61) is not a cron minute field"),
        ({"fleet_autoscale_horizon": -5}, "fleet_autoscale_horizon (-5) must be within 0-86400"),
    ],
    ids=[
        "broker_kind",
        "no_password",
        "empty_password",
        "name",
        "duplicate",
        "weight",
        "min_max",
        "command",
        "over_budget",
        "importance",
        "type",
        "priority_level",
        "priority_weights",
        "activemq_heap",
        "activemq_ports",
        "load_high",
        "load_low",
        "cron_minute",
        "autoscale_horizon",
    ],
)
def test_bad_input_fails_in_preflight_naming_the_variable(tmp_path, variables, message):
    code, output = run_site(tmp_path, **variables)
    assert code != 0, output
    assert message in output, output
    assert "PLAY [Install and tune the message broker]" not in output, output
