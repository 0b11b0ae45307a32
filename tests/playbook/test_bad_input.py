"""Bad input stops site.yml in its preflight play, before any host changes, with a message
naming the variable (and the group). Runs the real playbook against this machine with a
local connection in check mode, so that even a check that failed to stop it changes nothing."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

# The ansible-playbook of the interpreter running the tests (.venv/bin/pytest needs no PATH).
_BESIDE = Path(sys.executable).with_name("ansible-playbook")
ANSIBLE_PLAYBOOK = str(_BESIDE) if _BESIDE.exists() else "ansible-playbook"

GOOD_GROUP = {"name": "imports", "command": "/usr/local/bin/brokerfleet-worker"}
PREFLIGHT = "PLAY [Check every input before any host changes]"
BROKER_PLAY = "PLAY [Install and tune the message broker]"


MISSING = object()


def local_inventory(brokers=("testhost",), workers=None, **variables):
    """This machine as host `testhost`, in groups brokers and workers, with ``variables``;
    ``brokers`` may name more hosts, each this machine too. ``workers`` maps the worker hosts
    (this machine too) to their host variables, by default {"testhost": None}."""
    local = {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"}
    return {
        "all": {
            "children": {
                "brokers": {"hosts": dict.fromkeys(brokers)},
                "workers": {"hosts": workers or {"testhost": None}},
            },
            "vars": {**local, **variables},
        }
    }


def run_site(
    tmp_path, extra_vars=None, verbose=False, brokers=("testhost",), workers=None, **variables
):
    """site.yml in check mode on this machine as host `testhost` (broker and workers), with
    ``variables`` in the inventory and ``extra_vars`` given as ``-e name=value`` strings;
    ``workers`` as for local_inventory."""
    variables.setdefault("broker_password", "not-a-real-secret")
    variables = {k: v for k, v in variables.items() if v is not MISSING}
    variables.setdefault("worker_groups", [GOOD_GROUP])
    variables.setdefault("fleet_cpus", 2)
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(local_inventory(brokers, workers, **variables)))
    cli = [arg for name, value in (extra_vars or {}).items() for arg in ("-e", f"{name}={value}")]
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="false", ANSIBLE_NOCOLOR="true")
    result = subprocess.run(
        [
            ANSIBLE_PLAYBOOK,
            "--check",
            *(["-v"] if verbose else []),
            "-i",
            str(path),
            *cli,
            "site.yml",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def group(**keys):
    return {**GOOD_GROUP, **keys}


def where(index=0, name="imports"):
    return f"worker_groups[{index}] (name {name!r})"


# (variables, what the output must name, id). Extra vars go in "-e" (strings, as -e gives them).
CASES = [
    # --- what the bundle refused before --------------------------------------------------------
    ({"broker_kind": "kafka"}, ["broker_kind must be one of rabbitmq, activemq"], "broker_kind"),
    ({"broker_password": MISSING}, ["broker_password is required"], "no_password"),
    ({"broker_password": ""}, ["broker_password is required"], "empty_password"),
    (
        {"broker_password": "padded "},
        ["broker_password must not begin or end with a blank"],
        "padded_password",
    ),
    ({"worker_groups": [group(name="Imports")]}, [where(name="Imports"), "name must"], "name"),
    (
        {"worker_groups": [GOOD_GROUP, GOOD_GROUP]},
        [where(1), "name is used by an earlier group"],
        "duplicate",
    ),
    ({"worker_groups": [group(weight=0)]}, [where(), "weight must be"], "weight"),
    ({"worker_groups": [group(min=3, max=2)]}, [where(), "max (2) must be >= min (3)"], "min_max"),
    ({"worker_groups": [{"name": "imports"}]}, [where(), "command is required"], "command"),
    (
        {"worker_groups": [group(min=9)]},
        ["imports=9", "ask for 9 processes at their min"],
        "budget",
    ),
    (
        {"worker_groups": [group(importance=7)]},
        [where(), "importance must be 1 (shed first) to 5 (never shed), got 7"],
        "importance",
    ),
    ({"workers_per_cpu": "many"}, ["workers_per_cpu must be a number > 0, got 'many'"], "type"),
    (
        {"worker_groups": [group(priority_levels={"urgent": 1})]},
        [where(), "priority_levels: unknown level 'urgent'"],
        "priority_level",
    ),
    (
        {"worker_groups": [group(priority_levels={"high": 0, "low": 0})]},
        [where(), "priority_levels: at least one level needs a weight > 0"],
        "priority_weights",
    ),
    ({"broker_kind": "activemq", "activemq_heap_mb": 10**8}, ["activemq_heap_mb"], "activemq_heap"),
    (
        {"broker_kind": "activemq", "broker_stomp_port": 61616},
        ["broker_openwire_port and broker_stomp_port are both 61616"],
        "activemq_ports",
    ),
    (
        {"fleet_checks_load_high": 5},
        ["fleet_checks_load_high must be a number within 0.1-4, got 5"],
        "load_high",
    ),
    (
        {"fleet_checks_load_low": 0.9},
        ["fleet_checks_load_low (0.9) must be below fleet_checks_load_high (0.8)"],
        "load_low",
    ),
    (
        {"fleet_checks_minute": "61"},
        ["fleet_checks_minute ('61') is not a cron minute field"],
        "cron_minute",
    ),
    (
        {"fleet_autoscale_horizon": -5},
        ["fleet_autoscale_horizon must be an integer within 0-86400, got -5"],
        "autoscale_horizon",
    ),
    # --- names and text, matched whole, without control characters ------------------------------
    (
        {"worker_groups": [group(name="imports\n")]},
        [where(name="imports\n"), "name must match"],
        "name_newline",
    ),
    ({"worker_groups": [group(name="a" * 65)]}, [where(name="a" * 65), "name must"], "name_long"),
    (
        {"worker_groups": [group(command="/usr/bin/worker\n--evil")]},
        [where(), "command must not contain control characters"],
        "command_newline",
    ),
    (
        {"worker_groups": [group(command="/usr/bin/worker 'unbalanced")]},
        [where(), "command cannot be split into words"],
        "command_quote",
    ),
    (
        {"worker_groups": [group(directory="/srv/app\n")]},
        [where(), "directory must not contain control characters"],
        "directory_newline",
    ),
    (
        {"worker_groups": [group(directory="srv/app")]},
        [where(), "directory must be an absolute path"],
        "directory_relative",
    ),
    ({"worker_groups": [group(user="root")]}, [where(), "user root is refused"], "user_root"),
    (
        {"broker_kind": "activemq", "worker_groups": [group(broker_user="importer,admins")]},
        [where(), "broker_user must match"],
        "group_broker_user_comma",
    ),
    (
        {"worker_groups": [group(broker_user="brokerfleet")]},
        [where(), "broker_user 'brokerfleet' is the shared broker_user"],
        "group_broker_user_shared",
    ),
    (
        {"worker_groups": [group(user="Bad User")]},
        [where(), "user must be a Unix user name"],
        "user_name",
    ),
    # --- numbers ----------------------------------------------------------------------------------
    ({"fleet_cpus": 0}, ["fleet_cpus must be an integer >= 1, got 0"], "fleet_cpus_0"),
    (
        {"worker_groups": [group(weight=float("nan"))]},
        [where(), "weight must be a number > 0, got nan"],
        "weight_nan",
    ),
    (
        {"worker_groups": [group(job_seconds=float("inf"))]},
        [where(), "job_seconds must be a number > 0 and <= 86400, got inf"],
        "job_seconds_inf",
    ),
    (
        {"worker_groups": [group(job_seconds=100000)]},
        [where(), "job_seconds must be a number > 0 and <= 86400"],
        "job_seconds_day",
    ),
    (
        {"worker_groups": [group(job_seconds=120, max_job_seconds=60)]},
        [where(), "max_job_seconds (60) must be >= job_seconds (120)"],
        "max_job_seconds_below_job_seconds",
    ),
    (
        {"worker_groups": [group(max_drain_seconds=0)]},
        [where(), "max_drain_seconds must be a number > 0 and <= 604800 when set, got 0"],
        "max_drain_seconds_0",
    ),
    (
        {"worker_groups": [group(recycle_after=-1)]},
        [where(), "recycle_after must be an integer >= 1"],
        "recycle_negative",
    ),
    (
        {"worker_groups": [group(delivery_limit=0)]},
        [where(), "delivery_limit must be an integer >= 1, got 0"],
        "delivery_limit_zero",
    ),
    ({"worker_groups": [group(weight=True)]}, [where(), "weight must be a number"], "weight_bool"),
    ({"worker_groups": [group(wieght=2)]}, [where(), "unknown key 'wieght'"], "unknown_key"),
    (
        {"broker_port": 70000},
        ["broker_port must be an integer within 1-65535, got 70000"],
        "broker_port",
    ),
    (
        {"rabbitmq_management_port": 5672},
        ["broker_port and rabbitmq_management_port are both 5672"],
        "rabbitmq_ports",
    ),
    (
        {"rabbitmq_prometheus_port": 70000},
        ["rabbitmq_prometheus_port must be an integer within 1-65535, got 70000"],
        "rabbitmq_prometheus_port",
    ),
    (
        {"rabbitmq_prometheus_port": 15672},
        ["rabbitmq_management_port and rabbitmq_prometheus_port are both 15672"],
        "rabbitmq_prometheus_port_collision",
    ),
    # RabbitMQ refuses a host name for prometheus.tcp.ip, and then does not start.
    (
        {"rabbitmq_prometheus_address": "localhost"},
        ["rabbitmq_prometheus_address must be an IP address"],
        "rabbitmq_prometheus_address",
    ),
    # -e gives strings: numeric ones are taken, others refused naming the variable.
    ({"-e": {"workers_per_cpu": "nan"}}, ["workers_per_cpu must be a number > 0"], "e_nan"),
    ({"-e": {"rabbitmq_memory_fraction": "lots"}}, ["rabbitmq_memory_fraction"], "e_word"),
    (
        {"-e": {"rabbitmq_memory_fraction": "0.95"}},
        ["rabbitmq_memory_fraction must be a number within 0.1-0.9, got '0.95'"],
        "e_fraction",
    ),
    ({"-e": {"fleet_cpus": "0"}}, ["fleet_cpus must be an integer >= 1, got '0'"], "e_cpus_0"),
    (
        {"-e": {"fleet_checks_load_high": "1e999"}},
        ["fleet_checks_load_high must be a number within 0.1-4"],
        "e_inf",
    ),
    # --- environment --------------------------------------------------------------------------
    (
        {"worker_groups": [group(environment={"APP_MODE": None})]},
        [where(), "environment['APP_MODE'] must be a string or a finite number, got None"],
        "env_null",
    ),
    (
        {"worker_groups": [group(environment={"APP_DEBUG": True})]},
        [where(), "environment['APP_DEBUG'] must be a string or a finite number, got True"],
        "env_true",
    ),
    (
        {"worker_groups": [group(environment={"APP_HOSTS": ["a", "b"]})]},
        [where(), "environment['APP_HOSTS'] must be a string or a finite number"],
        "env_list",
    ),
    (
        {"worker_groups": [group(environment={"APP_MODE": "prod\nEVIL=1"})]},
        [where(), "environment['APP_MODE'] must not contain control characters"],
        "env_newline",
    ),
    (
        {"worker_groups": [group(environment={"BROKER_URL": "amqp://elsewhere"})]},
        [where(), "environment['BROKER_URL']: BROKER_URL is set by the bundle"],
        "env_bundle_key",
    ),
    (
        {"worker_groups": [group(environment={"1APP": "x"})]},
        [where(), "environment['1APP']: the name must match"],
        "env_key",
    ),
    (
        {"worker_groups": [group(environment=None)]},
        [where(), "environment must be a mapping of NAME: value, got None"],
        "env_none",
    ),
    # --- queues -------------------------------------------------------------------------------
    ({"worker_groups": [group(queue="a,b")]}, [where(), "queue must match"], "queue_comma"),
    ({"worker_groups": [group(queue="amq.x")]}, [where(), "reserved by RabbitMQ"], "queue_amq"),
    (
        {"broker_kind": "activemq", "worker_groups": [group(queue=">")]},
        [where(), "queue must match", "'>'"],
        "activemq_queue_gt",
    ),
    (
        {"broker_kind": "activemq", "worker_groups": [group(queue="*")]},
        [where(), "queue must match", "'*'"],
        "activemq_queue_star",
    ),
    (
        {"broker_kind": "activemq", "worker_groups": [group(queue="ActiveMQ.DLQ")]},
        [where(), "reserved by ActiveMQ"],
        "activemq_queue_reserved",
    ),
    (
        {"worker_groups": [GOOD_GROUP, group(name="thumbs", queue="imports.dead")]},
        [where(1, "thumbs"), "queue 'imports.dead' is the dead-letter queue", where()],
        "queue_is_dead_letter",
    ),
    (
        {
            "worker_groups": [
                group(name="jobs", priority_levels={"high": 2, "low": 1}),
                group(name="urgent", queue="jobs.high"),
            ]
        },
        [where(1, "urgent"), "queue 'jobs.high' is also consumed by", where(0, "jobs")],
        "queue_shared_level",
    ),
    # --- broker and cron globals ----------------------------------------------------------------
    ({"broker_host": "bad host!"}, ["broker_host must be a host name or an IP"], "broker_host"),
    (
        {"broker_hosts": ["127.0.0.1", "mq2/x?y"]},
        ["broker_hosts[1] must be a host name or an IP"],
        "broker_hosts",
    ),
    ({"broker_user": ""}, ["broker_user must not be empty"], "broker_user"),
    (
        {"broker_vhost": "fleet\n"},
        ["broker_vhost must not contain control characters"],
        "broker_vhost",
    ),
    (
        {"broker_password": "s3cret\nline"},
        ["broker_password must not contain control characters"],
        "password_newline",
    ),
    (
        {"fleet_checks_alert_command": "notify-chat\nrm -rf /"},
        ["fleet_checks_alert_command must not contain control characters"],
        "alert_command_newline",
    ),
    (
        {"fleet_checks_minute": "*\n"},
        ["fleet_checks_minute ('*\\n') is not a cron minute field"],
        "cron_minute_newline",
    ),
    (
        {"fleet_checks_mailto": "ops@example.com\nEVIL=1"},
        ["fleet_checks_mailto must not contain control characters"],
        "mailto_newline",
    ),
    (
        {"fleet_checks_prometheus_dir": "metrics"},
        ["fleet_checks_prometheus_dir must be an absolute path"],
        "prometheus_dir",
    ),
]


@pytest.mark.parametrize(
    ("variables", "names"),
    [pytest.param(variables, names, id=id_) for variables, names, id_ in CASES],
)
def test_bad_input_fails_in_preflight_naming_the_variable(tmp_path, variables, names):
    variables = dict(variables)
    code, output = run_site(tmp_path, extra_vars=variables.pop("-e", None), **variables)
    assert code != 0, output
    for name in names:
        assert name in output, output
    assert BROKER_PLAY not in output, output
    # Nothing ran after preflight, and preflight itself changed nothing.
    assert output.count("PLAY [") == 1, output
    assert re.search(r"^testhost\s+: ok=\d+\s+changed=0\s", output, re.MULTILINE), output
    assert "Traceback" not in output, output


@pytest.mark.parametrize(
    ("kind", "brokers", "message"),
    [
        ("activemq", 2, "but broker_kind activemq runs on one broker host only"),
        ("rabbitmq", 2, "a RabbitMQ cluster needs an odd number of nodes, at least 3"),
    ],
)
def test_a_brokers_group_the_bundle_does_not_build_is_refused(tmp_path, kind, brokers, message):
    names = ["testhost", *(f"mq{number}" for number in range(2, brokers + 1))]
    code, output = run_site(tmp_path, brokers=names, broker_kind=kind)
    assert code != 0, output
    assert re.search(message.replace(" ", r"\s+"), output), output
    assert BROKER_PLAY not in output, output


def test_a_group_with_another_queue_on_another_worker_host_is_refused(tmp_path):
    """worker_groups per worker host (host variables): the broker declares the union, so one
    group name must have one queue everywhere. Every host fails alike, before any change."""
    workers = {
        "testhost": {"worker_groups": [group(queue="imports.a")]},
        "worker2": {"worker_groups": [group(queue="imports.b"), group(name="thumbs")]},
    }
    code, output = run_site(tmp_path, workers=workers)
    assert code != 0, output
    message = (
        "worker_groups: group 'imports' has queue 'imports.a' on host testhost but 'imports.b' "
        "on host worker2"
    )
    assert re.search(re.escape(message).replace(r"\ ", r"\s+"), output), output
    assert BROKER_PLAY not in output, output
    assert output.count("PLAY [") == 1, output
    for host in workers:
        assert re.search(
            rf"^{host}\s+: ok=\d+\s+changed=0\s+unreachable=0\s+failed=1", output, re.M
        )
    assert "Traceback" not in output, output


def test_a_password_is_never_shown(tmp_path):
    code, output = run_site(tmp_path, broker_password="hunter2\nhunter3")
    assert code != 0
    assert "broker_password" in output
    assert "hunter" not in output


def preflight_part(output: str) -> str:
    """The output of the preflight play: up to the next play."""
    start = output.index(PREFLIGHT)
    following = output.find("PLAY [", start + len(PREFLIGHT))
    return output[start:] if following == -1 else output[start:following]


@pytest.mark.parametrize(
    ("variables", "extra_vars", "sized"),
    [
        pytest.param(
            {},
            {
                "rabbitmq_memory_fraction": "0.35",
                "fleet_cpus": "8",
                "workers_per_cpu": "1.5",
                "worker_memory_mb": "256",
                "fleet_autoscale_horizon": "0",
                "broker_port": "5673",
                "rabbitmq_management_port": "15673",
                "rabbitmq_prometheus_port": "15693",
                "rabbitmq_memory_limit_mb": "2048",
                "rabbitmq_queue_max_length": "5000",
                "rabbitmq_default_consumer_prefetch": "2",
                "fleet_checks_load_high": "0.9",
                "fleet_checks_load_low": "0.4",
                "fleet_checks_runs": "5",
                "worker_fleet_os_reserve_mb": "512",
                "worker_fleet_startretries": "3",
                "worker_fleet_log_backups": "2",
            },
            # The watermark: 0.35 of the 2048 MB limit.
            ["8 CPUs x 1.5 (memory-capped)", "absolute_mb: 716"],
            id="rabbitmq",
        ),
        pytest.param(
            {"broker_kind": "activemq"},
            {
                "fleet_cpus": "8",
                "broker_openwire_port": "61617",
                "broker_stomp_port": "61614",
                "activemq_jmx_port": "1100",
                "activemq_heap_fraction": "0.3",
                "activemq_memory_percent": "60",
                "activemq_store_limit_mb": "1024",
                "activemq_temp_limit_mb": "256",
                "activemq_default_queue_prefetch": "0",
                "activemq_max_connections": "500",
                "activemq_max_frame_size_mb": "5",
            },
            ["8 CPUs x 2 (memory-capped)", "store_mb: 1024", "temp_mb: 256"],
            id="activemq",
        ),
    ],
)
def test_numbers_given_as_extra_var_strings_pass_preflight(tmp_path, variables, extra_vars, sized):
    """`-e name=value` gives strings: preflight takes numeric ones and sizes with them. The
    check-mode run may fail later on this machine (services it would install are missing), so
    only the preflight play is judged."""
    code, output = run_site(tmp_path, extra_vars=extra_vars, verbose=True, **variables)
    assert "Traceback" not in output, output
    assert "TypeError" not in output, output
    preflight = preflight_part(output)
    assert "fatal:" not in preflight and "[ERROR]" not in preflight, output
    assert "PLAY [" in output[output.index(PREFLIGHT) + len(PREFLIGHT) :], output
    # The sizing ran on the converted numbers.
    for task in ("Share this host's worker budget across the groups", "Check the worker settings"):
        assert re.search(re.escape(task) + r"\] \*+\nok: \[testhost\]", preflight), output
    for figure in sized:
        assert figure in preflight, output


def test_an_inventory_laid_out_as_the_example_says_reads_its_vault(tmp_path):
    """inventories/example's layout: settings in group_vars/all/main.yml, the password in an
    encrypted group_vars/all/vault.yml beside it. Both are read: preflight passes, sizes the
    group from main.yml, and the run gets past it."""
    password_file = tmp_path / "vault-pass"
    password_file.write_text("vault-test-only\n")
    inventory = tmp_path / "inventory"
    settings = inventory / "group_vars" / "all"
    settings.mkdir(parents=True)
    (inventory / "hosts.yml").write_text(yaml.safe_dump(local_inventory()))
    main = {
        "broker_password": "{{ vault_broker_password }}",
        "fleet_cpus": 3,
        "worker_groups": [GOOD_GROUP],
    }
    (settings / "main.yml").write_text(yaml.safe_dump(main))
    vault = settings / "vault.yml"
    vault.write_text(yaml.safe_dump({"vault_broker_password": "s3cret from the vault"}))
    vault_args = ["--vault-password-file", str(password_file)]
    encrypt = [str(Path(ANSIBLE_PLAYBOOK).with_name("ansible-vault")), "encrypt", *vault_args]
    subprocess.run([*encrypt, str(vault)], check=True, capture_output=True, timeout=60)
    assert vault.read_text().startswith("$ANSIBLE_VAULT;")
    result = subprocess.run(
        [ANSIBLE_PLAYBOOK, "--check", "-v", *vault_args, "-i", str(inventory), "site.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, ANSIBLE_FORCE_COLOR="false", ANSIBLE_NOCOLOR="true"),
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    preflight = preflight_part(output)
    assert "fatal:" not in preflight and "[ERROR]" not in preflight, output
    assert "budget 6: {''imports'': 6}" in preflight, output  # main.yml's group: 3 CPUs x 2
    assert "s3cret from the vault" not in output


@pytest.mark.parametrize(
    "cookie",
    [MISSING, "tooShort1", "twenty-or-more but 'quoted' & spaced"],
    ids=["missing", "short", "unsafe"],
)
def test_a_cluster_without_a_usable_erlang_cookie_is_refused(tmp_path, cookie):
    """Three RabbitMQ brokers need the secret their nodes share: missing or unsafe, preflight
    refuses it by name before any change, and never shows it."""
    code, output = run_site(
        tmp_path, brokers=["testhost", "mq2", "mq3"], rabbitmq_erlang_cookie=cookie
    )
    assert code != 0, output
    assert "rabbitmq_erlang_cookie" in output, output
    if cookie is not MISSING:
        assert cookie not in output, output
    assert BROKER_PLAY not in output, output
