"""The worker spec: what the controller writes (plugins/module_utils/hostfiles.py worker_specs)
and what roles/worker_fleet/files/brokerfleet_exec.py starts from it, read back through the real
launcher."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brokerfleet import hostfiles, sizing

ROOT = Path(__file__).resolve().parents[2]
EXEC = ROOT / "roles/worker_fleet/files/brokerfleet_exec.py"

BROKER = {
    "kind": "rabbitmq",
    "host": "mq1",
    "user": "brokerfleet",
    "password": "p@ss/:#%\"'word",
    "vhost": "brokerfleet",
    "port": 5672,
    "openwire_port": 61616,
    "stomp_port": 61613,
}

# Values supervisord's own syntax mangles: % expansion, " #" and " ;" comments, commas,
# both quotes, backslashes, unicode, padding.
AWKWARD = {
    "PERCENT": "100% %(asctime)s +%s",
    "COMMENTS": "alerts #ops ; not a comment",
    "COMMA": "a,b=c",
    "QUOTES": "say \"hi\" and 'bye'\\",
    "UNICODE": "Grüße, 東京",
    "PADDED": "  both ends  ",
    "EMPTY": "",
    "NUMBER": 8,
}

# Prints what it was started with, as JSON.
ECHO = (
    "import json, os, sys; "
    "print(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(), 'env': dict(os.environ)}))"
)


def plan(**keys):
    [planned] = sizing.fleet_plan([{"name": "jobs", "command": "/bin/true", **keys}], 2)
    return planned


def write_spec(tmp_path, spec):
    path = tmp_path / "jobs.spec.json"
    # As the role writes it: Ansible's to_nice_json (indent 4, ASCII escapes).
    path.write_text(json.dumps(spec, indent=4, sort_keys=True) + "\n")
    return path


def launch(path, process="jobs-00"):
    env = {"PATH": os.environ["PATH"], "FROM_SUPERVISORD": "kept"}
    return subprocess.run(
        [sys.executable, str(EXEC), str(path), process],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def test_every_value_reaches_the_worker_exactly_as_written(tmp_path):
    command = f'{sys.executable} -c "{ECHO}" \'50% #1; a,b\' "dq \\"x\\"" \' pad \' Grüße'
    group = plan(command=command, directory=str(tmp_path), environment=AWKWARD)
    spec = hostfiles.worker_spec(group, BROKER, allow_root=True)
    result = launch(write_spec(tmp_path, spec))
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["argv"] == ["50% #1; a,b", 'dq "x"', " pad ", "Grüße"]
    assert seen["cwd"] == str(tmp_path)
    for key, value in AWKWARD.items():
        assert seen["env"][key] == str(value)
    assert seen["env"]["WORKER_PROCESS"] == "jobs-00"
    assert seen["env"]["FROM_SUPERVISORD"] == "kept"
    assert seen["env"]["BROKER_URL"] == (
        "amqp://brokerfleet:p%40ss%2F%3A%23%25%22%27word@mq1:5672/brokerfleet"
    )


@pytest.mark.skipif(os.getuid() != 0, reason="the launcher's root refusal needs root")
def test_the_launcher_refuses_root_unless_the_spec_allows_it(tmp_path):
    spec = hostfiles.worker_spec(plan(), BROKER, allow_root=False)
    result = launch(write_spec(tmp_path, spec))
    assert result.returncode != 0 and "would run as root" in result.stderr


def test_the_worker_gets_sigterm_when_supervisord_dies(tmp_path):
    # A stand-in for supervisord starts the launcher, then is killed with -9, as a crashed
    # supervisord would be: the worker it started must not run on unsupervised.
    command = f'{sys.executable} -c "import time; time.sleep(60)"'
    group = plan(command=command, directory=str(tmp_path))
    path = write_spec(tmp_path, hostfiles.worker_spec(group, BROKER, allow_root=True))
    starter = (
        "import subprocess, sys, time; "
        "print(subprocess.Popen(sys.argv[1:]).pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", starter, sys.executable, str(EXEC), str(path), "jobs-00"],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    time.sleep(0.5)  # the launcher has become the command
    parent.kill()
    parent.wait()

    def gone():
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        return state == "Z"  # dead, waiting for whoever adopted it to reap it

    deadline = time.monotonic() + 5
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(), "the worker outlived its supervisord"


@pytest.mark.parametrize(
    "broken",
    [
        "not json",
        json.dumps({"format": 2}),
        json.dumps({"format": 1, "argv": [], "directory": "/", "environment": {}}),
        json.dumps({"format": 1, "argv": ["x"], "directory": "rel", "environment": {}}),
        json.dumps({"format": 1, "argv": ["x"], "directory": "/no/such/dir", "environment": {}}),
        json.dumps({"format": 1, "argv": ["x"], "directory": "/", "environment": {"A": 1}}),
    ],
)
def test_the_check_mode_refuses_a_broken_spec(tmp_path, broken):
    path = tmp_path / "spec.json"
    path.write_text(broken)
    result = subprocess.run(
        [sys.executable, str(EXEC), "--check", str(path)], capture_output=True, text=True
    )
    assert result.returncode != 0 and result.stderr.startswith("brokerfleet-exec: ")
    assert "Traceback" not in result.stderr, result.stderr


def test_a_spec_file_is_named_by_its_content():
    one = hostfiles.worker_specs([plan()], BROKER)
    same = hostfiles.worker_specs([plan()], BROKER)
    other = hostfiles.worker_specs([plan()], {**BROKER, "password": "rotated"})
    assert one == same
    assert one["jobs"]["file"].startswith("jobs.") and one["jobs"]["file"].endswith(".json")
    assert one["jobs"]["file"] != other["jobs"]["file"]


def test_an_ipv6_broker_host_is_bracketed_in_urls():
    environment = sizing.worker_environment(plan(), {**BROKER, "host": "fd00::5"})
    assert "@[fd00::5]:5672/" in environment["BROKER_URL"]
    activemq = sizing.worker_environment(plan(), {**BROKER, "kind": "activemq", "host": "fd00::5"})
    assert activemq["BROKER_URL"].startswith("tcp://[fd00::5]:61616?")
    assert "@[fd00::5]:61613?" in activemq["BROKER_STOMP_URL"]


def test_workers_get_a_url_per_node_of_a_cluster():
    cluster = {**BROKER, "hosts": ["mq1", "fd00::5", "mq3"]}
    environment = sizing.worker_environment(plan(), cluster)
    urls = environment["BROKER_URLS"].split(",")
    assert urls[0] == environment["BROKER_URL"]
    assert [url.split("@")[1] for url in urls] == [
        "mq1:5672/brokerfleet",
        "[fd00::5]:5672/brokerfleet",
        "mq3:5672/brokerfleet",
    ]
    # The password is URL-encoded: no comma can split a URL.
    assert all(url.startswith("amqp://brokerfleet:p%40ss%2F%3A%23%25%22%27word@") for url in urls)
    single = sizing.worker_environment(plan(), BROKER)
    assert single["BROKER_URLS"] == single["BROKER_URL"]
