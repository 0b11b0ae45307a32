"""Unit and property tests for plugins/module_utils/inputs.py: what preflight refuses."""

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokerfleet import inputs, queues, sizing


def group(name, **keys):
    return {"name": name, "command": "/bin/true", **keys}


def errors_of(groups, **kwargs):
    return inputs.group_errors(groups, **kwargs)


def assert_refused(errors, *expected):
    for text in expected:
        assert any(text in e for e in errors), errors


CONTROL_CHARACTERS = [chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]]


# --- worker groups ----------------------------------------------------------------------------


def test_valid_groups_have_no_errors():
    groups = [
        group("pocket"),
        group("chrome", weight=2, min=0, max=3),
        group(
            "jobs",
            command="php bin/console 'import pocket' -m 50",
            queue="wallabag.import:jobs-1",
            directory="/var/www/wallabag",
            user="www-data",
            weight=0.5,
            job_seconds=86400,
            max_job_seconds=86400,
            max_drain_seconds=604800,
            importance=5,
            recycle_after=1,
            delivery_limit=1,
            environment={"APP_ENV": "prod", "RETRIES": 3, "RATIO": 0.5, "NAME": "Zürich"},
            priority_levels={"high": 2, "low": 1},
        ),
    ]
    assert inputs.group_errors(groups) == []
    assert inputs.group_errors(groups, "activemq") == []
    assert sizing.group_errors is inputs.group_errors


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ([group("Pocket")], "worker_groups[0] (name 'Pocket'): name must match"),
        ([group("a-b")], "name must match"),
        ([group("imports\n")], "worker_groups[0] (name 'imports\\n'): name must match"),
        ([group("a" * 65)], "name must match [a-z][a-z0-9_]* (at most 64 characters)"),
        ([group("a"), group("a")], "worker_groups[1] (name 'a'): name is used by an earlier group"),
        ([group("a", weight=0)], "worker_groups[0] (name 'a'): weight must be a number > 0"),
        ([group("a", weight=-1)], "weight must be a number > 0"),
        ([group("a", weight=math.nan)], "weight must be a number > 0, got nan"),
        ([group("a", weight=math.inf)], "weight must be a number > 0, got inf"),
        ([group("a", weight=True)], "weight must be a number > 0, got True"),
        ([group("a", weight="2")], "weight must be a number > 0, got '2'"),
        ([group("a", min=3, max=2)], "worker_groups[0] (name 'a'): max (2) must be >= min (3)"),
        ([group("a", min=-1)], "min must be an integer >= 0"),
        ([group("a", min=1.5)], "min must be an integer >= 0"),
        ([group("a", max=True)], "max must be an integer, got True"),
        ([{"name": "a"}], "worker_groups[0] (name 'a'): command is required"),
        ([group("a", command="")], "command is required"),
        ([group("a", command=["/bin/true"])], "command must be a string"),
        ([group("a", command="/bin/true\n")], "command must not contain control characters"),
        ([group("a", command="run 'it")], "command cannot be split into words like a shell"),
        ([group("a", command='run "it')], "No closing quotation"),
        ([group("a", command="run \\")], "command cannot be split"),
        ([group("a", command="   ")], "command must name a program"),
        ([group("a", command="''")], "command must name a program"),
        ([group("a", job_seconds=0)], "job_seconds must be a number > 0"),
        ([group("a", job_seconds=math.inf)], "job_seconds must be a number > 0 and <= 86400"),
        ([group("a", job_seconds=86401)], "job_seconds must be a number > 0 and <= 86400"),
        ([group("a", max_job_seconds=0)], "max_job_seconds must be a number > 0 and <= 86400"),
        ([group("a", max_job_seconds=math.nan)], "max_job_seconds must be a number > 0"),
        ([group("a", max_job_seconds=86401)], "max_job_seconds must be a number > 0 and <= 86400"),
        ([group("a", max_job_seconds="600")], "max_job_seconds must be a number > 0 and <= 86400"),
        ([group("a", max_job_seconds=True)], "max_job_seconds must be a number > 0 and <= 86400"),
        ([group("a", max_drain_seconds=0)], "max_drain_seconds must be a number > 0 and <= 604800"),
        ([group("a", max_drain_seconds=-60)], "max_drain_seconds must be a number > 0"),
        ([group("a", max_drain_seconds=math.inf)], "max_drain_seconds must be a number > 0"),
        ([group("a", max_drain_seconds=604801)], "max_drain_seconds must be a number > 0 and <="),
        (
            [group("a", max_drain_seconds="3600")],
            "worker_groups[0] (name 'a'): max_drain_seconds must be a number > 0 and <= 604800 "
            "when set, got '3600'",
        ),
        ([group("a", max_drain_seconds=True)], "max_drain_seconds must be a number > 0 and <="),
        # The default job_seconds is 5.
        ([group("a", max_job_seconds=3)], "max_job_seconds (3) must be >= job_seconds (5)"),
        (
            [group("a", job_seconds=120, max_job_seconds=90.5)],
            "worker_groups[0] (name 'a'): max_job_seconds (90.5) must be >= job_seconds (120)",
        ),
        ([group("a", importance=6)], "importance must be 1 (shed first) to 5 (never shed)"),
        ([group("a", importance=True)], "importance must be 1"),
        ([group("a", importance=3.0)], "importance must be 1"),
        ([group("a", recycle_after=0)], "recycle_after must be an integer >= 1 when set"),
        ([group("a", recycle_after=-5)], "recycle_after must be an integer >= 1"),
        ([group("a", delivery_limit=0)], "worker_groups[0] (name 'a'): delivery_limit must be"),
        ([group("a", delivery_limit=-1)], "delivery_limit must be an integer >= 1, got -1"),
        ([group("a", delivery_limit=2.5)], "delivery_limit must be an integer >= 1, got 2.5"),
        ([group("a", delivery_limit=True)], "delivery_limit must be an integer >= 1, got True"),
        ([group("a", delivery_limit=None)], "delivery_limit must be an integer >= 1, got None"),
        # Like every group key, and unlike the global numbers, no numeric strings.
        ([group("a", delivery_limit="20")], "delivery_limit must be an integer >= 1, got '20'"),
        ([group("a", directory="srv")], "directory must be an absolute path, got 'srv'"),
        ([group("a", directory=None)], "directory must be an absolute path, got None"),
        ([group("a", directory="/srv\n")], "directory must not contain control characters"),
        ([group("a", user="root")], "user root is refused"),
        ([group("a", user="Bob")], "user must be a Unix user name"),
        ([group("a", user="www-data\n")], "user must be a Unix user name"),
        ([group("a", user="a" * 33)], "user must be a Unix user name"),
        ([group("a", wieght=2)], "worker_groups[0] (name 'a'): unknown key 'wieght'"),
        ("pocket", "worker_groups must be a list"),
        (["pocket"], "worker_groups[0] must be a mapping"),
    ],
)
def test_group_errors_name_the_variable_and_group(groups, expected):
    assert_refused(inputs.group_errors(groups), expected)


def test_root_needs_fleet_allow_root_workers():
    assert inputs.group_errors([group("a", user="root")], allow_root=True) == []
    assert (
        inputs.input_errors(
            {"fleet_allow_root_workers": "true", "worker_groups": [group("a", user="root")]}
        )
        == []
    )
    assert_refused(
        inputs.input_errors(
            {"fleet_allow_root_workers": False, "worker_groups": [group("a", user="root")]}
        ),
        "worker_groups[0] (name 'a'): user root is refused",
    )
    with pytest.raises(ValueError, match="user root is refused"):
        sizing.fleet_plan([group("a", user="root")], 2)
    assert sizing.fleet_plan([group("a", user="root")], 2, allow_root=True)[0]["user"] == "root"


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        (None, "environment must be a mapping of NAME: value, got None"),
        (["A=1"], "environment must be a mapping"),
        ({"A": None}, "environment['A'] must be a string or a finite number, got None"),
        ({"A": True}, "environment['A'] must be a string or a finite number, got True"),
        ({"A": False}, "environment['A'] must be a string or a finite number, got False"),
        ({"A": ["x"]}, "environment['A'] must be a string or a finite number"),
        ({"A": {"x": 1}}, "environment['A'] must be a string or a finite number"),
        ({"A": math.nan}, "environment['A'] must be a string or a finite number, got nan"),
        ({"A": "x\ny"}, "environment['A'] must not contain control characters"),
        ({"A": "x\ty"}, "environment['A'] must not contain control characters"),
        ({"1A": "x"}, "environment['1A']: the name must match"),
        ({"A-B": "x"}, "environment['A-B']: the name must match"),
        ({"A\n": "x"}, "environment['A\\n']: the name must match"),
        ({1: "x"}, "environment[1]: the name must match"),
        ({"BROKER_URL": "x"}, "environment['BROKER_URL']: BROKER_URL is set by the bundle"),
    ],
)
def test_environment_errors_name_the_key(environment, expected):
    errors = inputs.group_errors([group("jobs", environment=environment)])
    assert_refused(errors, "worker_groups[0] (name 'jobs'): " + expected)


@pytest.mark.parametrize("key", sorted(inputs.BUNDLE_ENVIRONMENT))
def test_every_key_the_bundle_sets_is_refused(key):
    assert_refused(inputs.environment_errors({key: "x"}), f"{key} is set by the bundle")


# --- queues -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("queue", "kind", "expected"),
    [
        ("a,b", "rabbitmq", "queue must match"),
        ("a b", "rabbitmq", "queue must match"),
        (">", "activemq", "queue must match"),
        ("*", "activemq", "queue must match"),
        ("jobs.>", "activemq", "queue must match"),
        ("jobs\n", "rabbitmq", "queue must match"),
        ("", "rabbitmq", "queue must match"),
        (None, "rabbitmq", "queue must match"),
        (".jobs", "rabbitmq", "queue must match"),
        ("a" * 201, "rabbitmq", "queue must be at most 200 characters"),
        ("amq.x", "rabbitmq", "names starting with amq. are reserved by RabbitMQ"),
        ("amq.x", "activemq", "reserved by RabbitMQ"),
        ("ActiveMQ.DLQ", "activemq", "names starting with ActiveMQ. are reserved by ActiveMQ"),
    ],
)
def test_queue_names_are_refused(queue, kind, expected):
    errors = inputs.group_errors([group("jobs", queue=queue)], kind)
    assert_refused(errors, "worker_groups[0] (name 'jobs'): ", expected)


def test_activemq_prefix_is_only_reserved_on_activemq():
    assert inputs.group_errors([group("jobs", queue="ActiveMQ.jobs")], "rabbitmq") == []


def test_a_queue_may_not_be_another_groups_dead_letter_queue():
    groups = [group("imports"), group("thumbs", queue="imports.dead")]
    assert_refused(
        inputs.group_errors(groups),
        "worker_groups[1] (name 'thumbs'): queue 'imports.dead' is the dead-letter queue of "
        "queue 'imports' of worker_groups[0] (name 'imports')",
    )
    # On ActiveMQ the dead-letter queue is ActiveMQ.DLQ.Queue.imports: no clash.
    assert inputs.group_errors(groups, "activemq") == []
    # A priority level's dead-letter queue counts too, in either order.
    levels = [group("jobs", priority_levels={"high": 1}), group("x", queue="jobs.high.dead")]
    assert_refused(inputs.group_errors(levels), "queue 'jobs.high.dead' is the dead-letter queue")
    assert_refused(inputs.group_errors(levels[::-1]), "is the dead-letter queue")


def test_groups_share_a_queue_only_without_priority_levels():
    assert inputs.group_errors([group("a", queue="q"), group("b", queue="q")]) == []
    assert inputs.group_errors([group("a"), group("b", queue="a")]) == []
    shared = [group("a", queue="q", priority_levels={"high": 1}), group("b", queue="q.high")]
    assert_refused(
        inputs.group_errors(shared),
        "worker_groups[1] (name 'b'): queue 'q.high' is also consumed by worker_groups[0] "
        "(name 'a'); only groups without priority_levels may share a queue",
    )
    both = [
        group("a", queue="q", priority_levels={"high": 1}),
        group("b", queue="q", priority_levels={"high": 1}),
    ]
    assert_refused(inputs.group_errors(both), "queue 'q.high' is also consumed by")


def test_dead_letter_queue_names_follow_the_broker():
    assert queues.dead_letter_queue("jobs", "rabbitmq") == "jobs.dead"
    assert queues.dead_letter_queue("jobs", "activemq") == "ActiveMQ.DLQ.Queue.jobs"


# --- global variables -------------------------------------------------------------------------

GOOD_GLOBALS = {
    "broker_kind": "rabbitmq",
    "broker_password": "s3cret",
    "broker_user": "brokerfleet",
    "broker_vhost": "/",
    "broker_host": "mq1.example.com",
    "broker_port": 5672,
    "broker_openwire_port": 61616,
    "broker_stomp_port": 61613,
    "workers_per_cpu": 2,
    "worker_memory_mb": 128,
    "fleet_cpus": None,
    "fleet_autoscale_horizon": 0,
    "fleet_allow_root_workers": False,
    "worker_groups": [group("imports")],
}


def test_good_globals_have_no_errors():
    assert inputs.input_errors(GOOD_GLOBALS) == []


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("broker_kind", "kafka", "broker_kind must be one of rabbitmq, activemq, got 'kafka'"),
        ("broker_password", None, "broker_password is required and must not be empty"),
        ("broker_password", "", "broker_password is required"),
        ("broker_password", 1234, "broker_password must be a string"),
        ("broker_password", "a\nb", "broker_password must not contain control characters"),
        ("broker_password", " padded", "broker_password must not begin or end with a blank"),
        ("broker_user", "", "broker_user must not be empty"),
        ("broker_user", "app\r", "broker_user must not contain control characters"),
        ("broker_vhost", "\x85", "broker_vhost must not contain control characters"),
        ("broker_host", "", "broker_host is empty and the inventory has no host in group brokers"),
        ("broker_host", "bad host", "broker_host must be a host name or an IP address"),
        ("broker_host", "mq1\n", "broker_host must be a host name or an IP address"),
        ("broker_host", "-mq1", "broker_host must be a host name"),
        ("broker_host", "[mq1]", "broker_host must be a host name"),
        ("broker_host", "fe80::1%eth0", "broker_host must be an address without a zone"),
        ("broker_port", 0, "broker_port must be an integer within 1-65535, got 0"),
        ("broker_port", "70000", "broker_port must be an integer within 1-65535, got '70000'"),
        ("broker_stomp_port", "61613.0", "broker_stomp_port must be an integer within 1-65535"),
        ("fleet_cpus", 0, "fleet_cpus must be an integer >= 1, got 0"),
        ("fleet_cpus", "0", "fleet_cpus must be an integer >= 1, got '0'"),
        ("fleet_cpus", "eight", "fleet_cpus must be an integer >= 1, got 'eight'"),
        ("fleet_cpus", True, "fleet_cpus must be an integer >= 1, got True"),
        ("fleet_cpus", 2.5, "fleet_cpus must be an integer >= 1, got 2.5"),
        ("workers_per_cpu", 0, "workers_per_cpu must be a number > 0, got 0"),
        ("workers_per_cpu", "nan", "workers_per_cpu must be a number > 0, got 'nan'"),
        ("workers_per_cpu", math.inf, "workers_per_cpu must be a number > 0, got inf"),
        ("workers_per_cpu", "1e999", "workers_per_cpu must be a number > 0"),
        ("worker_memory_mb", 0, "worker_memory_mb must be an integer >= 1, got 0"),
        (
            "fleet_autoscale_horizon",
            -5,
            "fleet_autoscale_horizon must be an integer within 0-86400",
        ),
        ("fleet_autoscale_horizon", 86401, "fleet_autoscale_horizon must be an integer within"),
        ("fleet_allow_root_workers", "maybe", "fleet_allow_root_workers must be true or false"),
    ],
)
def test_global_errors_name_the_variable(name, value, expected):
    assert_refused(inputs.input_errors({**GOOD_GLOBALS, name: value}), expected)


def test_a_password_is_never_shown():
    for password in ("hunter2\n", 12345678, ""):
        errors = inputs.input_errors({**GOOD_GLOBALS, "broker_password": password})
        assert errors and all("hunter2" not in e and "12345678" not in e for e in errors)


@pytest.mark.parametrize(
    "host", ["mq1", "mq1.example.com.", "broker_1", "10.0.0.5", "::1", "[2001:db8::1]", "fe80::1"]
)
def test_broker_host_takes_names_and_addresses(host):
    assert inputs.host_error("broker_host", host) is None


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"rabbitmq_memory_fraction": "0.95"}, "rabbitmq_memory_fraction must be a number within"),
        ({"rabbitmq_memory_fraction": "lots"}, "got 'lots'"),
        ({"rabbitmq_memory_limit_mb": 0}, "rabbitmq_memory_limit_mb must be an integer >= 1"),
        ({"rabbitmq_queue_max_length": -1}, "rabbitmq_queue_max_length must be an integer >= 0"),
        ({"rabbitmq_default_consumer_prefetch": 0}, "rabbitmq_default_consumer_prefetch must be"),
        ({"rabbitmq_amqp_address": "0.0.0.0\n"}, "rabbitmq_amqp_address must be an IP address"),
        ({"rabbitmq_amqp_address": "mq1.example.net"}, "rabbitmq_amqp_address must be an IP"),
        ({"rabbitmq_management_address": "localhost"}, "rabbitmq_management_address must be an IP"),
        ({"rabbitmq_amqp_address": "::", "rabbitmq_management_address": "::1"}, None),
        ({"rabbitmq_restart_quiesce_seconds": -1}, "rabbitmq_restart_quiesce_seconds must be"),
        ({"rabbitmq_restart_quiesce_seconds": "0"}, None),
        (
            {"rabbitmq_extra_config": {"heartbeat": "30\nx = 1"}},
            "rabbitmq_extra_config['heartbeat']",
        ),
        (
            {"broker_port": 5672, "rabbitmq_management_port": "5672"},
            "port collision: broker_port and rabbitmq_management_port are both 5672",
        ),
        ({"rabbitmq_prometheus_port": 0}, "rabbitmq_prometheus_port must be an integer within"),
        (
            {"rabbitmq_management_port": 15672, "rabbitmq_prometheus_port": "15672"},
            "rabbitmq_management_port and rabbitmq_prometheus_port are both 15672",
        ),
        (
            {"broker_port": 5672, "rabbitmq_prometheus_port": 5672},
            "broker_port and rabbitmq_prometheus_port are both 5672",
        ),
        # RabbitMQ's is_ip validator: a host name, brackets or a zone keep the node from starting.
        ({"rabbitmq_prometheus_address": "localhost"}, "rabbitmq_prometheus_address must be an IP"),
        ({"rabbitmq_prometheus_address": "[::1]"}, "rabbitmq_prometheus_address must be an IP"),
        ({"rabbitmq_prometheus_address": "fe80::1%eth0"}, "must be an address without a zone"),
        ({"rabbitmq_prometheus_address": None}, "rabbitmq_prometheus_address must be an IP"),
        ({"rabbitmq_prometheus_address": "::1", "rabbitmq_prometheus_port": "9419"}, None),
        ({"rabbitmq_prometheus_address": "10.0.0.5"}, None),
        (
            {"broker_openwire_port": 1, "broker_stomp_port": 1, "activemq_jmx_port": 1},
            "broker_openwire_port and broker_stomp_port and activemq_jmx_port are all 1",
        ),
        ({"activemq_heap_mb": 100}, "activemq_heap_mb must be an integer >= 128, got 100"),
        (
            {"activemq_heap_fraction": 0.9},
            "activemq_heap_fraction must be a number within 0.05-0.75",
        ),
        ({"activemq_memory_percent": "95"}, "activemq_memory_percent must be an integer within 10"),
        ({"activemq_store_limit_mb": 10}, "activemq_store_limit_mb must be an integer >= 64"),
        ({"activemq_temp_limit_mb": "x"}, "activemq_temp_limit_mb must be an integer >= 64"),
        ({"activemq_default_queue_prefetch": -1}, "activemq_default_queue_prefetch must be"),
        ({"activemq_max_connections": 0}, "activemq_max_connections must be an integer >= 1"),
        ({"activemq_max_frame_size_mb": 0}, "activemq_max_frame_size_mb must be an integer >= 1"),
        ({"activemq_bind_address": "any"}, None),
        ({"activemq_restart_quiesce_seconds": 90000}, "within 0-86400, got 90000"),
        ({"fleet_checks_load_high": 5}, "fleet_checks_load_high must be a number within 0.1-4"),
        (
            {"fleet_checks_load_high": "0.8", "fleet_checks_load_low": "0.9"},
            "fleet_checks_load_low (0.9) must be below fleet_checks_load_high (0.8)",
        ),
        ({"fleet_checks_load_low": 0}, "fleet_checks_load_low must be a number > 0"),
        ({"fleet_checks_runs": 61}, "fleet_checks_runs must be an integer within 1-60"),
        ({"fleet_checks_minute": "61"}, "fleet_checks_minute ('61') is not a cron minute field"),
        ({"fleet_checks_minute": "*\n"}, "fleet_checks_minute ('*\\n') is not a cron minute"),
        ({"fleet_checks_minute": "0,30\n"}, "is not a cron minute field"),
        ({"fleet_checks_minute": None}, "is not a cron minute field"),
        ({"fleet_checks_mailto": "a@b\nX=1"}, "fleet_checks_mailto must not contain control"),
        ({"fleet_checks_alert_command": "x\ny"}, "fleet_checks_alert_command must not contain"),
        ({"fleet_checks_prometheus_dir": "metrics"}, "fleet_checks_prometheus_dir must be an abs"),
        ({"fleet_checks_prometheus_dir": "/m\n"}, "fleet_checks_prometheus_dir must not contain"),
        ({"fleet_checks_load_source": "drill"}, "fleet_checks_load_source must be an absolute"),
        ({"worker_fleet_os_reserve_mb": -1}, "worker_fleet_os_reserve_mb must be an integer >= 0"),
        ({"worker_fleet_log_dir": "logs"}, "worker_fleet_log_dir must be an absolute path"),
        ({"worker_fleet_log_maxbytes": "10 MB"}, "worker_fleet_log_maxbytes must be a size"),
        ({"worker_fleet_startretries": "x"}, "worker_fleet_startretries must be an integer >= 0"),
    ],
)
def test_role_variable_errors_name_the_variable(variables, expected):
    errors = inputs.input_errors(variables)
    if expected is None:
        assert errors == []
    else:
        assert_refused(errors, expected)


@pytest.mark.parametrize(
    "variables",
    [
        {"fleet_checks_minute": minute}
        for minute in ("*", "*/5", "0", "15", 15, "0,30", "0-29", "5-10,40")
    ]
    + [
        {"fleet_checks_prometheus_dir": ""},
        {"fleet_checks_prometheus_dir": "/var/lib/prometheus/node-exporter"},
        {"fleet_checks_alert_command": ""},
        {"fleet_checks_load_high": "0.9", "fleet_checks_load_low": ".5", "fleet_checks_runs": "5"},
        {"worker_fleet_log_maxbytes": "10MB"},
        {"worker_fleet_log_maxbytes": 1048576},
        {"rabbitmq_memory_limit_mb": None},
        {"activemq_heap_mb": ""},
    ],
)
def test_good_role_variables_have_no_errors(variables):
    assert inputs.input_errors(variables) == []


def test_an_unknown_variable_is_a_mistake_of_the_role():
    with pytest.raises(ValueError, match="no rule for the variable 'fleet_cpu'"):
        inputs.input_errors({"fleet_cpu": 2})


# --- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("fleet_cpus", "8", 8),
        ("fleet_cpus", 8, 8),
        ("fleet_cpus", None, None),
        ("fleet_cpus", "", None),
        ("rabbitmq_memory_fraction", "0.35", 0.35),
        ("rabbitmq_memory_fraction", ".5", 0.5),
        ("workers_per_cpu", "2", 2),
        ("workers_per_cpu", "1e1", 10.0),
        ("broker_port", "5672", 5672),
    ],
)
def test_number_converts_numeric_strings(name, value, expected):
    assert inputs.number(name, value) == expected


@pytest.mark.parametrize(
    "value", ["", None, "08", "+8", " 8", "8 ", "8.0", "0x10", "1_000", "nan", "inf", True, 8.0]
)
def test_integers_are_integers(value):
    with pytest.raises(ValueError, match="worker_memory_mb must be an integer >= 1"):
        inputs.number("worker_memory_mb", value)


def test_too_many_digits_is_an_error_naming_the_variable():
    with pytest.raises(ValueError, match="fleet_cpus must be"):
        inputs.number("fleet_cpus", "9" * 5000)


@given(st.integers(min_value=1, max_value=65535))
def test_every_port_given_as_a_string_is_taken(port):
    assert inputs.number("broker_port", str(port)) == port


@given(st.floats(min_value=0.1, max_value=0.9))
def test_every_fraction_given_as_a_string_is_taken(fraction):
    assert inputs.number("rabbitmq_memory_fraction", repr(fraction)) == fraction


@given(st.one_of(st.floats(), st.integers(), st.booleans(), st.text(max_size=12), st.none()))
def test_number_returns_a_finite_number_within_bounds_or_raises_naming_the_variable(value):
    rule = inputs.NUMBERS["workers_per_cpu"]
    try:
        converted = inputs.number("workers_per_cpu", value)
    except ValueError as error:
        assert str(error).startswith("workers_per_cpu must be a number > 0, got ")
    else:
        assert inputs.is_number(converted) and rule.holds(converted)


# --- text, properties -------------------------------------------------------------------------

TEXT_FIELDS = [
    ("broker_user", lambda t: inputs.input_errors({"broker_user": t})),
    ("broker_vhost", lambda t: inputs.input_errors({"broker_vhost": t})),
    ("broker_password", lambda t: inputs.input_errors({"broker_password": t})),
    (
        "fleet_checks_alert_command",
        lambda t: inputs.input_errors({"fleet_checks_alert_command": t}),
    ),
    ("fleet_checks_mailto", lambda t: inputs.input_errors({"fleet_checks_mailto": t})),
    ("command", lambda t: inputs.group_errors([group("a", command="run " + t)])),
    ("directory", lambda t: inputs.group_errors([group("a", directory="/srv/" + t)])),
    ("environment['A']", lambda t: inputs.group_errors([group("a", environment={"A": t})])),
]


@pytest.mark.parametrize(("field", "check"), TEXT_FIELDS, ids=[f for f, _ in TEXT_FIELDS])
@given(
    before=st.text(max_size=8),
    control=st.sampled_from(CONTROL_CHARACTERS),
    after=st.text(max_size=8),
)
def test_a_control_character_anywhere_is_refused_naming_the_field(
    field, check, before, control, after
):
    errors = check(before + control + after)
    assert any(field in e and "control characters" in e for e in errors), errors


@given(st.text(alphabet=st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=20))
def test_text_without_control_characters_is_taken(text):
    assert inputs.input_errors({"broker_user": text, "fleet_checks_alert_command": text}) == []
    assert inputs.environment_errors({"A": text}) == []


@given(st.text(max_size=70))
def test_group_names_are_matched_whole(name):
    refused = any("name must match" in e for e in inputs.group_errors([group(name)]))
    valid = re.fullmatch(r"[a-z][a-z0-9_]*", name) is not None and len(name) <= 64
    assert refused != valid


@given(st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True), st.sampled_from(["\n", "\r", " "]))
def test_a_valid_name_with_a_trailing_blank_is_refused(name, blank):
    assert_refused(inputs.group_errors([group(name + blank)]), "name must match")


@given(st.text(max_size=30), st.sampled_from(["rabbitmq", "activemq"]))
def test_queue_names_are_a_safe_set(queue, kind):
    errors = inputs.queue_name_errors(queue, kind)
    if not errors:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]*", queue)
        assert not queue.startswith("amq.")
        assert kind == "rabbitmq" or not queue.startswith("ActiveMQ.")
        assert not set(queue) & set(">*, \n")


group_names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
valid_groups = st.lists(
    st.fixed_dictionaries(
        {"name": group_names, "command": st.just("/bin/true")},
        optional={
            "weight": st.floats(min_value=0.01, max_value=100),
            "min": st.integers(min_value=0, max_value=3),
            "job_seconds": st.floats(min_value=0.01, max_value=86400),
            "importance": st.integers(min_value=1, max_value=5),
            "recycle_after": st.integers(min_value=1, max_value=1000),
            "delivery_limit": st.integers(min_value=1, max_value=10**6),
            "environment": st.dictionaries(
                st.from_regex(r"APP_[A-Z]{1,5}", fullmatch=True),
                st.one_of(st.text(alphabet="abc/:= ", max_size=5), st.integers()),
                max_size=3,
            ),
        },
    ),
    max_size=5,
    unique_by=lambda g: g["name"],
)


@given(valid_groups, st.sampled_from(["rabbitmq", "activemq"]))
def test_groups_within_the_contract_have_no_errors(groups, kind):
    assert inputs.group_errors(groups, kind) == []


@given(valid_groups.filter(bool), st.integers(min_value=0, max_value=100))
def test_a_queue_equal_to_a_dead_letter_queue_is_always_refused(groups, seed):
    victim = groups[seed % len(groups)]
    extra = group(
        "zz_extra", queue=queues.dead_letter_queue(queues.consumed_queues(victim)[0], "rabbitmq")
    )
    errors = inputs.group_errors([*groups, extra])
    assert any("is the dead-letter queue" in e for e in errors), errors


@given(st.one_of(st.integers(), st.floats(), st.booleans(), st.text(max_size=4), st.none()))
def test_delivery_limit_is_an_integer_of_at_least_one(limit):
    errors = inputs.group_errors([group("a", delivery_limit=limit)])
    valid = isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1
    assert (errors == []) == valid, errors
    if not valid:
        assert errors == [
            f"worker_groups[0] (name 'a'): delivery_limit must be an integer >= 1, got {limit!r}"
        ]


def test_delivery_limit_defaults_to_the_queues_default():
    assert inputs.GROUP_DEFAULTS["delivery_limit"] == queues.DEFAULT_DELIVERY_LIMIT == 20
    assert inputs.QUEUE_TYPES == queues.QUEUE_TYPES == ("classic", "quorum")


# --- a group's own broker user ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rabbitmq", "activemq"])
def test_a_group_may_name_its_own_broker_user(kind):
    assert inputs.group_errors([group("a", broker_user="app.a@host")], kind, shared_user="bf") == []


@pytest.mark.parametrize(
    ("groups", "kind", "expected"),
    [
        ([group("a", broker_user="x,y")], "activemq", "broker_user must match"),
        ([group("a", broker_user="bad user")], "rabbitmq", "broker_user must match"),
        ([group("a", broker_user="x\n")], "rabbitmq", "broker_user must match"),
        ([group("a", broker_user="bf")], "rabbitmq", "is the shared broker_user, the broker"),
        # The broker check's own user (access.check_user), on either kind.
        ([group("a", broker_user="bf-check")], "rabbitmq", "'bf-check' is the shared"),
        ([group("a", broker_user="bf-check")], "activemq", "'bf-check' is the shared"),
        (
            [group("a", broker_user="x"), group("b", broker_user="x")],
            "rabbitmq",
            "worker_groups[1] (name 'b'): broker_user 'x' is the shared broker_user",
        ),
    ],
)
def test_a_group_broker_user_is_refused_naming_the_group(groups, kind, expected):
    errors = inputs.group_errors(groups, kind, shared_user="bf")
    assert any(expected in error for error in errors), errors


# --- the brokers group ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hosts", [[], ["mq1"], ["mq1", "mq2", "mq3"], [f"mq{i}" for i in range(5)]]
)
def test_one_rabbitmq_host_or_an_odd_cluster_of_three_or_more_is_accepted(hosts):
    assert inputs.topology_errors("rabbitmq", hosts, "quorum") == []
    assert inputs.topology_errors("rabbitmq", hosts, "classic") == []


@pytest.mark.parametrize("count", [2, 4, 6])
def test_an_even_rabbitmq_cluster_is_refused_saying_what_works(count):
    [error] = inputs.topology_errors("rabbitmq", [f"mq{i}" for i in range(count)])
    assert error.startswith(f"brokers holds {count} hosts (mq0, mq1")
    assert "odd number of nodes, at least 3" in error


def test_activemq_on_more_than_one_host_or_with_quorum_queues_is_refused():
    [error] = inputs.topology_errors("activemq", ["mq1", "mq2", "mq3"])
    assert "broker_kind activemq runs on one broker host only" in error
    assert "use broker_kind rabbitmq for a cluster" in error
    [error] = inputs.topology_errors("activemq", ["mq1"], "quorum")
    assert error.startswith("broker_queue_type 'quorum' is RabbitMQ's")
    assert inputs.topology_errors("activemq", ["mq1"]) == []


def test_the_queue_type_is_classic_or_quorum():
    assert inputs.input_errors({"broker_queue_type": "quorum"}) == []
    assert inputs.input_errors({"broker_queue_type": "stream"}) == [
        "broker_queue_type must be one of classic, quorum, got 'stream'"
    ]


@given(
    st.floats(min_value=0.001, max_value=86400),
    st.floats(min_value=0, max_value=1),
)
def test_any_max_job_seconds_between_job_seconds_and_a_day_is_taken(seconds, share):
    longest = seconds + share * (86400 - seconds)
    assert inputs.group_errors([group("a", job_seconds=seconds, max_job_seconds=longest)]) == []


@given(st.floats(min_value=0, max_value=7 * 86400, exclude_min=True) | st.integers(1, 7 * 86400))
def test_any_max_drain_seconds_up_to_a_week_is_taken(seconds):
    assert inputs.group_errors([group("a", max_drain_seconds=seconds)]) == []
    assert inputs.group_errors([group("a", max_drain_seconds=None)]) == []


def test_a_bad_job_seconds_is_reported_once_not_again_by_max_job_seconds():
    errors = inputs.group_errors([group("a", job_seconds=0, max_job_seconds=10)])
    assert errors == [
        "worker_groups[0] (name 'a'): job_seconds must be a number > 0 and <= 86400, got 0"
    ]


def test_max_job_seconds_reaches_the_worker_as_a_key_the_bundle_owns():
    assert_refused(
        inputs.group_errors([group("a", environment={"WORKER_MAX_JOB_SECONDS": "99999"})]),
        "WORKER_MAX_JOB_SECONDS is set by the bundle itself",
    )
