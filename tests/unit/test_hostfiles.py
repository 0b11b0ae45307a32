"""Round trips of every file the controller writes for a host program: rendered by
plugins/module_utils/hostfiles.py as the roles write it (to_nice_json), then read back by the
host program's own reader (roles/fleet_checks/files/brokerfleet_check.py; the worker specs and
brokerfleet-exec: tests/unit/test_worker_spec.py)."""

import base64
import http.server
import json
import re
import socket
import threading

import pytest

import brokerfleet_check as check
from brokerfleet import access, hostfiles, sizing

# What the playbook's to_nice_json filter writes.
NICE = {"indent": 4, "sort_keys": True, "ensure_ascii": False}


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data, **NICE) + "\n")
    return str(path)


def group(name, **keys):
    return {"name": name, "command": "/bin/true", **keys}


def test_both_sides_agree_on_every_format():
    assert check.FLEET_FORMAT == hostfiles.FLEET_FORMAT
    assert check.CHECKS_FORMAT == hostfiles.CHECKS_FORMAT
    assert check.BROKER_FORMAT == hostfiles.BROKER_FORMAT


# --- fleet.json -------------------------------------------------------------------------------


def test_the_manifest_holds_what_the_checks_need_and_no_secrets():
    plan = sizing.fleet_plan([group("jobs", priority_levels={"high": 1, "low": 0})], 2)
    manifest = hostfiles.fleet_manifest(plan, 1, 2)
    assert re.fullmatch("[0-9a-f]{12}", manifest["groups"][0].pop("revision"))
    assert manifest == {
        "format": hostfiles.FLEET_FORMAT,
        "cpus": 1,
        "budget": 2,
        "groups": [
            {
                "name": "jobs",
                "programs": ["jobs-00", "jobs-01"],
                "processes": 2,
                "min": 1,
                "max": None,
                "importance": 3,
                "job_seconds": 5,
                "queues": ["jobs.high", "jobs.low"],
            }
        ],
    }


def test_the_checker_reads_the_manifest_back_and_expects_the_programs_the_plan_rendered(
    tmp_path, monkeypatch
):
    groups = [group("imports", max=3), group("thumbnails", weight=2), group("reports", min=0)]
    plan = sizing.fleet_plan(groups, 6, autoscale=True)
    manifest = hostfiles.fleet_manifest(plan, 3, 6)
    monkeypatch.setattr(check, "MANIFEST", write(tmp_path, "fleet.json", manifest))
    report = check.Report("workers")
    read = check.read_manifest(report)
    assert read == manifest["groups"] and report.data["problems"] == []
    expected = check.expected_processes(read, shed={})
    assert list(expected) == [program for g in plan for program in g["programs"]]
    assert [p for p, starts in expected.items() if starts] == [
        program for g in plan for program in g["programs"][: g["processes"]]
    ]


@pytest.mark.parametrize("data", [{"groups": []}, {"format": 99, "groups": []}, ["x"]])
def test_a_manifest_of_another_format_is_refused_not_half_read(tmp_path, monkeypatch, data):
    monkeypatch.setattr(check, "MANIFEST", write(tmp_path, "fleet.json", data))
    report = check.Report("workers")
    assert check.read_manifest(report) is None
    assert report.code == check.UNKNOWN
    assert "run the whole play" in report.data["problems"][0]


# --- checks.json ------------------------------------------------------------------------------

SETTINGS = {
    "load_high": "0.9",  # as -e gives them
    "load_low": 0.4,
    "runs": 5,
    "autoscale_horizon": 600,
    "alert_command": "logger -t fleet 'at 100%' # not a comment",
    "prometheus_dir": "/var/lib/prometheus/node-exporter",
    "load_source": "/var/lib/brokerfleet-check/drill-load",
    "backlog_source": None,
}


def test_the_checker_reads_its_settings_back_as_the_role_wrote_them(tmp_path):
    settings = hostfiles.checks_settings(**SETTINGS)
    path = write(tmp_path, "checks.json", settings)
    args = check.arguments(["workers", "--settings", path])
    assert check.apply_settings(args, check.Report("workers"))
    assert (args.load_high, args.load_low, args.runs) == (0.9, 0.4, 5)
    assert args.autoscale_horizon == 600
    assert args.alert_command == SETTINGS["alert_command"]
    assert args.load_source == SETTINGS["load_source"]
    assert args.backlog_source == check.BROKER_SAMPLE  # unset: the broker check's sample
    assert args.prometheus == "/var/lib/prometheus/node-exporter/brokerfleet-workers.prom"


def test_the_command_line_overrides_a_setting(tmp_path):
    path = write(tmp_path, "checks.json", hostfiles.checks_settings(**SETTINGS))
    args = check.arguments(["workers", "--settings", path, "--load-high", "2", "--runs", "1"])
    check.apply_settings(args, check.Report("workers"))
    assert (args.load_high, args.load_low, args.runs) == (2.0, 0.4, 1)


def test_without_settings_the_checks_do_not_run_but_status_does(tmp_path):
    missing = str(tmp_path / "absent.json")
    report = check.Report("workers")
    assert not check.apply_settings(check.arguments(["workers", "--settings", missing]), report)
    assert report.code == check.UNKNOWN
    report = check.Report("status")
    assert check.apply_settings(check.arguments(["status", "--settings", missing]), report)
    assert report.code == check.OK


def test_settings_are_refused_when_out_of_range():
    with pytest.raises(ValueError, match="fleet_checks_runs"):
        hostfiles.checks_settings(**{**SETTINGS, "runs": 0})


# --- broker.json ------------------------------------------------------------------------------

AWKWARD = {"user": "app user", "password": "p@ss:w/rd%25 é"}


class ManagementApi(http.server.BaseHTTPRequestHandler):
    """Answers the management API paths brokerfleet-check asks, and records the requests."""

    requests = []
    # {path without its query: (HTTP status, body)}, set by a test; otherwise no queues, and
    # {"status": "ok"} from every other path (/api/nodes included: a user it refuses is 401).
    answers = {}

    def do_GET(self):  # noqa: N802 - http.server's name
        self.requests.append((self.path, self.headers["Authorization"]))
        body = [] if self.path.startswith("/api/queues/") else {"status": "ok"}
        code, body = self.answers.get(self.path.split("?")[0], (200, body))
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_):
        pass


def test_the_checker_reaches_rabbitmq_as_the_role_told_it(tmp_path, monkeypatch):
    server = serve({}, monkeypatch)
    broker = {
        "kind": "rabbitmq",
        **AWKWARD,
        "vhost": "/",
        "management_address": "127.0.0.1",
        "management_port": server.server_port,
        # As roles/rabbitmq/tasks/check_config.yml passes them: the dead-letter queues' limit.
        "queue_max_length": 1000,
        "queue_type": "quorum",
        "queue_policy_extra": {"max-length": 500},
    }
    config = hostfiles.broker_config([group("jobs", max_drain_seconds=600)], broker)
    monkeypatch.setattr(check, "BROKER_CONFIG", write(tmp_path, "broker.json", config))
    try:
        read, sample = check.read_broker(check.Report("broker"))
    finally:
        server.shutdown()
    assert read == config
    assert read["queues"] == [
        {
            "name": "jobs",
            "group": "jobs",
            "level": None,
            "max_length": 500,
            "max_drain_seconds": 600,
            "dead": "jobs.dead",
            "dead_max_length": 1000,
        }
    ]
    assert not {"queue_max_length", "queue_type", "queue_policy_extra"} & set(read)
    assert sample["queues"] == {}
    # The check's own user (tagged monitoring, access.rabbitmq_users), never the shared one.
    user, password = "app user-check", access.check_password(AWKWARD["password"], "app user")
    assert (read["user"], read["password"]) == (user, password)
    assert AWKWARD["password"] not in json.dumps(config, **NICE)
    login = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    assert {auth for _, auth in ManagementApi.requests} == {login}
    paths = {path.split("?")[0] for path, _ in ManagementApi.requests}
    assert {"/api/queues/%2F", "/api/nodes"} <= paths
    checker = {entry["user"]: entry for entry in access.rabbitmq_users([], "app user", "x")}
    assert checker[user]["tags"] == ["monitoring"]


def serve(answers, monkeypatch):
    """A management API on loopback giving ``answers``; its URL."""
    monkeypatch.setattr(ManagementApi, "answers", answers)
    monkeypatch.setattr(ManagementApi, "requests", [])
    server = http.server.HTTPServer(("127.0.0.1", 0), ManagementApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# As RabbitMQ 3.10 answers (shortened to the columns asked): mq3 is down, mq1 is short of
# memory, and the imports queue has lost its replica on mq3.
NODES_ANSWER = [
    {
        "name": "rabbit@mq1",
        "running": True,
        "mem_alarm": True,
        "disk_free_alarm": False,
        "partitions": [],
        "being_drained": False,
    },
    {
        "name": "rabbit@mq2",
        "running": True,
        "mem_alarm": False,
        "disk_free_alarm": False,
        "partitions": [],
        "being_drained": False,
    },
    {"name": "rabbit@mq3", "running": False},  # a node down reports little more
]
MEMBERS = ["rabbit@mq1", "rabbit@mq2", "rabbit@mq3"]
QUEUES_ANSWER = [
    {
        "name": "jobs",
        "messages_ready": 4,
        "messages_unacknowledged": 1,
        "consumers": 2,
        "message_stats": {"publish": 10, "ack": 5},
        "type": "quorum",
        "members": MEMBERS,
        "online": MEMBERS[:2],
        "leader": "rabbit@mq2",
    },
    {"name": "jobs.dead", "messages_ready": 0, "type": "quorum", "members": MEMBERS},
]
ALARMS_ANSWER = {
    "status": "failed",
    "reason": "There are alarms in effect in the cluster",
    "alarms": [{"resource": "memory", "node": "rabbit@mq1"}],
}


def test_the_checker_reads_a_clusters_nodes_and_replicas(monkeypatch):
    server = serve(
        {
            "/api/nodes": (200, NODES_ANSWER),
            "/api/queues/%2F": (200, QUEUES_ANSWER),
            "/api/health/checks/alarms": (503, ALARMS_ANSWER),
        },
        monkeypatch,
    )
    config = {"url": f"http://127.0.0.1:{server.server_port}", "vhost": "/", **AWKWARD}
    try:
        sample = check.rabbitmq_sample(config)
    finally:
        server.shutdown()
    asked = dict(path.split("?") for path, _ in ManagementApi.requests if "?" in path)
    assert set(asked["/api/nodes"].removeprefix("columns=").split(",")) >= {
        "name",
        "running",
        "mem_alarm",
        "disk_free_alarm",
        "partitions",
    }
    assert {"type", "members", "online", "leader"} <= set(asked["/api/queues/%2F"].split(","))
    assert sample["nodes"] == [
        {
            "name": "rabbit@mq1",
            "running": True,
            "alarms": ["memory"],
            "partitions": [],
            "drained": False,
        },
        {"name": "rabbit@mq2", "running": True, "alarms": [], "partitions": [], "drained": False},
        {"name": "rabbit@mq3", "running": False, "alarms": [], "partitions": [], "drained": False},
    ]
    assert sample["queues"]["jobs"] == {
        "ready": 4,
        "unacked": 1,
        "consumers": 2,
        "published": 10,
        "acked": 5,
        "type": "quorum",
        "members": MEMBERS,
        "online": MEMBERS[:2],
        "leader": "rabbit@mq2",
    }
    problems = check.broker_problems(
        {"time": 0, **sample}, [{"name": "jobs", "group": "jobs", "dead": "jobs.dead"}]
    )
    # The memory alarm once (the health check's and the node's are the same), the node down,
    # the replica lost; jobs.dead's leader reported no replicas online: left alone.
    assert problems == [
        (check.CRITICAL, "memory alarm on rabbit@mq1: publishers are blocked"),
        (check.WARNING, "rabbit@mq3 not running: 2 of 3 nodes running"),
        (check.WARNING, "queue jobs: 2 of 3 replicas online"),
    ]


def test_nodes_the_user_may_not_see_are_unknown_not_an_error(monkeypatch):
    refused = {"error": "not_authorised", "reason": "Not monitor user"}
    server = serve({"/api/nodes": (401, refused)}, monkeypatch)
    config = {"url": f"http://127.0.0.1:{server.server_port}", "vhost": "/", **AWKWARD}
    try:
        sample = check.rabbitmq_sample(config)
    finally:
        server.shutdown()
    assert sample["nodes"] is None and sample["alarms"] == []


def test_the_checker_logs_in_to_activemq_as_the_role_told_it(tmp_path, monkeypatch):
    listener = socket.create_server(("127.0.0.1", 0))
    broker = {
        "kind": "activemq",
        **AWKWARD,
        "stomp_host": "127.0.0.1",
        "stomp_port": str(listener.getsockname()[1]),  # the inventory's broker_stomp_port
    }
    config = hostfiles.broker_config([group("jobs")], broker)
    monkeypatch.setattr(check, "BROKER_CONFIG", write(tmp_path, "broker.json", config))
    assert check.read_controller_file(check.BROKER_CONFIG, check.BROKER_FORMAT, None) == config
    assert config["queues"][0]["dead"] == "ActiveMQ.DLQ.Queue.jobs"

    frames = []

    def broker_side():
        connection, _ = listener.accept()
        with connection:
            frames.append(connection.recv(4096).decode())
            connection.sendall(b"CONNECTED\nversion:1.2\n\n\x00")
            frames.append(connection.recv(4096).decode())

    thread = threading.Thread(target=broker_side)
    thread.start()
    with listener:
        with open(check.BROKER_CONFIG) as written:
            check.Stomp(json.load(written)).close()
        thread.join(10)
    assert f"\nlogin:{AWKWARD['user']}\n" in frames[0]
    assert f"\npasscode:{AWKWARD['password']}\n" in frames[0]
    assert frames[1].startswith("SUBSCRIBE\n")


def test_an_unknown_kind_renders_no_broker_file():
    with pytest.raises(ValueError, match="broker kind must be one of rabbitmq, activemq"):
        hostfiles.broker_config([group("jobs")], {"kind": "kafka", **AWKWARD})


# --- what a re-run does: fleet_changes over two manifests --------------------------------------


def manifest(groups, budget, specs=None, **settings):
    plan = sizing.fleet_plan(groups, budget)
    return hostfiles.fleet_manifest(plan, budget, budget, specs, settings or None)


def test_a_scale_change_starts_and_stops_programs_and_restarts_none():
    groups = [group("imports", weight=3), group("thumbnails")]
    small, large = manifest(groups, 4), manifest(groups, 8)
    assert hostfiles.fleet_changes(small, large) == [
        {
            "group": "imports",
            "processes": [3, 6],
            "start": ["imports-03", "imports-04", "imports-05"],
            "stop": [],
            "restart": [],
        },
        {
            "group": "thumbnails",
            "processes": [1, 2],
            "start": ["thumbnails-01"],
            "stop": [],
            "restart": [],
        },
    ]
    [shrink, _] = hostfiles.fleet_changes(large, small)
    assert shrink["stop"] == ["imports-03", "imports-04", "imports-05"]
    assert hostfiles.fleet_changes(large, large) == []


def test_a_new_spec_or_program_setting_restarts_what_keeps_running():
    groups = [group("imports"), group("thumbnails")]
    before = manifest(groups, 4, {"imports": {"file": "imports.aaaa.json"}})
    after = manifest(groups, 4, {"imports": {"file": "imports.bbbb.json"}})
    assert hostfiles.fleet_changes(before, after) == [
        {
            "group": "imports",
            "processes": [2, 2],
            "start": [],
            "stop": [],
            "restart": ["imports-00", "imports-01"],
        }
    ]
    retried = manifest(groups, 4, {"imports": {"file": "imports.aaaa.json"}}, startretries=3)
    assert {c["group"] for c in hostfiles.fleet_changes(before, retried)} == {
        "imports",
        "thumbnails",
    }


def test_on_a_first_run_or_over_another_format_everything_starts():
    after = manifest([group("imports")], 2)
    for before in (None, {"format": 0, "groups": []}):
        [change] = hostfiles.fleet_changes(before, after)
        assert change["start"] == ["imports-00", "imports-01"]
    [gone] = hostfiles.fleet_changes(after, manifest([group("other")], 1))[1:]
    assert gone == {
        "group": "imports",
        "processes": [2, 0],
        "start": [],
        "stop": ["imports-00", "imports-01"],
        "restart": [],
    }
