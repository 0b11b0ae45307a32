"""The repository is also the collection brokerfleet.fleet: built with ansible-galaxy, installed
into a directory of its own, and used by its full names from a playbook elsewhere, with no
setting of this checkout (no ansible.cfg, no filter path, no editable install on the path)."""

import os
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import yaml
from ansible.release import __version__ as ansible_core

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# A playbook repository of the operator's own: preflight of the shared variables, then the
# worker role's checks and sizing on this machine, through the collection's roles and filters.
CONSUMER_PLAYBOOK = [
    {
        "name": "Size a worker fleet with the collection's roles",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": True,
        "vars": {
            "broker_password": "not-a-real-secret",
            "broker_host": "10.0.0.5",  # a broker elsewhere
            "fleet_cpus": 3,
            "workers_per_cpu": 2,
            "worker_groups": [{"name": "imports", "command": "/usr/local/bin/app-worker"}],
        },
        "tasks": [
            {
                "name": "Check the shared variables",
                "ansible.builtin.include_role": {
                    "name": "brokerfleet.fleet.fleet_contract",
                    "tasks_from": "validate",
                },
            },
            {
                "name": "Size the groups",
                "ansible.builtin.include_role": {
                    "name": "brokerfleet.fleet.worker_fleet",
                    "tasks_from": "validate",
                },
            },
            {
                "name": "Show the plan",
                "ansible.builtin.debug": {
                    "msg": "processes {{ worker_fleet_plan | map(attribute='processes') | list }}"
                },
            },
            {
                "name": "Use a filter by its full name",
                "ansible.builtin.debug": {
                    "msg": "poll {{ {'high': 2, 'low': 1} | brokerfleet.fleet.fleet_poll_order }}"
                },
            },
        ],
    }
]


def run(command, cwd, **env):
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ANSIBLE_", "PYTHON", "MOLECULE_"))
    }
    result = subprocess.run(
        command,
        cwd=cwd,
        env={**environment, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    return result.returncode, result.stdout + result.stderr


def test_the_built_collection_runs_from_a_playbook_elsewhere(tmp_path):
    code, output = run(
        [BIN / "ansible-galaxy", "collection", "build", "--output-path", tmp_path, ROOT], ROOT
    )
    assert code == 0, output
    (tarball,) = tmp_path.glob("brokerfleet-fleet-*.tar.gz")
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    assert "plugins/filter/fleet.py" in names and "roles/worker_fleet/tasks/main.yml" in names
    assert "plugins/module_utils/sizing.py" in names
    # The project's own test, deploy and tool files stay out.
    for path in ("molecule", "tests", ".venv", "collections", "inventories"):
        assert not any(name == path or name.startswith(path + "/") for name in names), path

    collections = tmp_path / "collections"
    code, output = run(
        [BIN / "ansible-galaxy", "collection", "install", "--no-deps", "-p", collections, tarball],
        tmp_path,
    )
    assert code == 0, output

    consumer = tmp_path / "consumer"
    consumer.mkdir()
    (consumer / "site.yml").write_text(yaml.safe_dump(CONSUMER_PLAYBOOK, sort_keys=False))
    # (The venv's editable install maps only the top-level name `brokerfleet`, which the
    # collection never imports: its filters import ansible_collections.brokerfleet.fleet.)
    code, output = run(
        [
            BIN / "ansible-playbook",
            *("-i", "localhost,", "-e", "ansible_python_interpreter=/usr/bin/python3"),
            "site.yml",
        ],
        consumer,
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_CONFIG=str(consumer / "ansible.cfg"),  # none: no setting of this checkout
    )
    assert code == 0, output
    assert "processes [6]" in output, output  # 3 CPUs x 2, one group
    assert "poll ['high', 'low', 'high']" in output, output  # smooth weighted round-robin
    assert "failed=0" in output, output


def test_the_collection_installs_from_git(tmp_path):
    # What was committed: ansible-galaxy clones the repository and builds it.
    code, output = run(
        [
            BIN / "ansible-galaxy",
            *("collection", "install", "--no-deps", "-p", tmp_path),
            f"git+file://{ROOT}",
        ],
        tmp_path,
    )
    assert code == 0, output
    installed = tmp_path / "ansible_collections" / "brokerfleet" / "fleet"
    assert (installed / "plugins" / "filter" / "fleet.py").is_file(), output
    assert (installed / "roles" / "rabbitmq" / "tasks" / "main.yml").is_file(), output


def test_one_version_and_one_ansible_core_everywhere():
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert galaxy["version"] == project["version"]
    assert f"## {galaxy['version']}" in (ROOT / "CHANGELOG.md").read_text()
    runtime = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())
    for meta in (ROOT / "roles").glob("*/meta/main.yml"):
        minimum = yaml.safe_load(meta.read_text())["galaxy_info"]["min_ansible_version"]
        assert runtime["requires_ansible"] == f">={minimum}.0", meta
    # What pyproject installs satisfies it: ansible-core of the running venv.
    assert tuple(map(int, ansible_core.split(".")[:2])) >= tuple(map(int, minimum.split(".")))
