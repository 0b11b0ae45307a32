"""The cluster decisions of roles/rabbitmq (plugins/module_utils/cluster.py), on answers of
`rabbitmqctl --formatter json cluster_status` as RabbitMQ 3.10 prints them."""

from brokerfleet import brokers, cluster, inputs

NODES = ["rabbit@mq1", "rabbit@mq2", "rabbit@mq3"]


def status(**changes):
    answer = {
        "alarms": [],
        "disk_nodes": list(NODES),
        "ram_nodes": [],
        "running_nodes": list(NODES),
        "partitions": {},
        "maintenance_status": {node: "not under maintenance" for node in NODES},
    }
    return {**answer, **changes}


def test_node_names_take_the_short_host_name():
    assert cluster.node_name("mq1.example.net") == "rabbit@mq1"
    assert cluster.node_name("mq2") == "rabbit@mq2"


def test_a_standalone_node_must_join_and_a_member_must_not():
    alone = status(disk_nodes=["rabbit@mq2"], running_nodes=["rabbit@mq2"])
    assert cluster.must_join(alone, "rabbit@mq1")
    assert not cluster.must_join(status(), "rabbit@mq1")
    assert not cluster.must_join(status(disk_nodes=["rabbit@mq1"]), "rabbit@mq1")


def test_a_healthy_cluster_has_no_problems():
    assert cluster.health_problems(status()) == []


def test_each_reason_not_to_restart_a_node_is_named():
    sick = status(
        running_nodes=NODES[:2],
        alarms=[{"node": "rabbit@mq1", "resource": "disk"}],
        partitions={"rabbit@mq2": ["rabbit@mq3"]},
        maintenance_status={"rabbit@mq1": "under maintenance"},
    )
    problems = cluster.health_problems(sick)
    assert problems[0] == "rabbit@mq3 is not running"
    assert "disk" in problems[1]
    assert problems[2] == "rabbit@mq2 cannot see rabbit@mq3"
    assert problems[3] == "rabbit@mq1 is drained (under maintenance)"
    assert cluster.under_maintenance(sick, "rabbit@mq1")
    assert not cluster.under_maintenance(sick, "rabbit@mq2")


def test_clients_reach_a_host_at_its_ansible_host_else_its_name():
    host_vars = {"mq1": {"ansible_host": "10.0.0.1"}, "mq2": {}}
    assert brokers.host_addresses(["mq1", "mq2"], host_vars) == ["10.0.0.1", "mq2"]


def test_the_erlang_cookie_is_required_checked_and_never_shown():
    assert inputs.input_errors({"rabbitmq_erlang_cookie": "A1" * 10}) == []
    (missing,) = inputs.input_errors({"rabbitmq_erlang_cookie": None})
    assert "required" in missing
    for bad in ("short", "x" * 19 + "'", "a b" * 10):
        (error,) = inputs.input_errors({"rabbitmq_erlang_cookie": bad})
        assert bad not in error


def test_broker_hosts_must_each_be_a_host():
    assert inputs.input_errors({"broker_hosts": ["mq1", "10.0.0.2", "::1"]}) == []
    (error,) = inputs.input_errors({"broker_hosts": ["mq1", "bad host"]})
    assert error.startswith("broker_hosts[1]")
