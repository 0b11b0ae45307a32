"""The Grafana dashboard (dashboards/brokerfleet.json) imports into Grafana and every metric its
panels query exists: RabbitMQ 3.10.8's own exporter, node_exporter, or brokerfleet-check's
textfile. molecule/default/tests/test_metrics.py proves each query returns data."""

from pathlib import Path

import pytest

import brokerfleet_check as check
from brokerfleet import dashboard

ROOT = Path(__file__).resolve().parents[2]
BOARD = dashboard.load(ROOT / dashboard.DASHBOARD)

# RabbitMQ 3.10.8's rabbitmq_prometheus (Debian's rabbitmq-server 3.10.8-1.1+deb12u1), read
# from its collectors' compiled literals (deps/rabbitmq_prometheus/src/collectors/). Names
# differ in later releases (3.12 has rabbitmq_alarms_memory_limit), hence the version.
RABBITMQ_3_10_8 = {
    # prometheus_rabbitmq_core_metrics_collector, /metrics/detailed (prefix rabbitmq_detailed_),
    # by the family the query string asks for.
    "queue_coarse_metrics": {
        "rabbitmq_detailed_queue_messages_ready",
        "rabbitmq_detailed_queue_messages_unacked",
        "rabbitmq_detailed_queue_messages",
        "rabbitmq_detailed_queue_process_reductions_total",
    },
    "queue_consumer_count": {"rabbitmq_detailed_queue_consumers"},
    # prometheus_rabbitmq_alarm_metrics_collector, /metrics (prefix rabbitmq_alarms_).
    "alarms": {
        "rabbitmq_alarms_file_descriptor_limit",
        "rabbitmq_alarms_free_disk_space_watermark",
        "rabbitmq_alarms_memory_used_watermark",
    },
}
NODE_EXPORTER = {"node_load1", "node_cpu_seconds_total"}


def brokerfleet_check_metrics():
    """Every metric name brokerfleet-check writes: its textfile for a report that has every
    part (load, a group, ActiveMQ usage, cluster nodes, a queue with rates and limits, a
    dead-letter queue with a limit)."""
    report = check.Report("broker")
    report.data["load_per_cpu"] = 0.5
    report.data["groups"] = {
        "imports": {"expected": 2, "running": 2, "shed": 0, "moved": 0, "paused": None}
    }
    queue = {"ready": 1, "unacked": 0, "consumers": 1, "in_per_second": 1.0}
    queue |= {"out_per_second": 1.0, "wait_seconds": 1.0, "max_drain_seconds": 60}
    queue |= {"max_length": 100, "long_wait": "OK", "near_max_length": "OK"}
    report.data["broker"] = {
        "usage": {"memory": 5},
        "nodes": [{"running": True}],
        "queues": {"imports": queue},
        "dead_letters": {"imports.dead": {"jobs": 0, "full": False, "max_length": 100}},
    }
    return {line.split("{")[0].split()[0] for line in report.prometheus().splitlines()}


def test_the_check_s_metrics_are_derived_from_what_it_writes():
    written = brokerfleet_check_metrics()
    for name in (
        "brokerfleet_check_status",
        "brokerfleet_workers_moved",
        "brokerfleet_queue_in_per_second",
        "brokerfleet_queue_out_per_second",
        "brokerfleet_queue_wait_seconds",
        "brokerfleet_broker_usage_percent",
        "brokerfleet_dead_letter_max_length",
    ):
        assert name in written


def test_every_metric_a_panel_uses_exists():
    known = set().union(*RABBITMQ_3_10_8.values(), NODE_EXPORTER, brokerfleet_check_metrics())
    for title, ref, expression in dashboard.expressions(BOARD):
        names = dashboard.metric_names(expression)
        assert names, f"{title} {ref}: no metric in {expression}"
        assert names <= known, f"{title} {ref}: unknown {sorted(names - known)}"


def test_the_detailed_metrics_come_from_the_families_the_scrape_asks_for():
    # README "Metrics" and test_metrics.py scrape /metrics/detailed with these families only.
    asked = set().union(*(RABBITMQ_3_10_8[family] for family in dashboard.DETAILED_FAMILIES))
    used = set().union(*(dashboard.metric_names(e) for _, _, e in dashboard.expressions(BOARD)))
    assert {name for name in used if name.startswith("rabbitmq_detailed_")} <= asked


def test_the_dashboard_imports_into_grafana_with_a_prometheus_input():
    assert BOARD["schemaVersion"] == 39
    assert BOARD["uid"] == "brokerfleet"
    (source,) = BOARD["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == (
        "DS_PROMETHEUS",
        "datasource",
        "prometheus",
    )
    (variable,) = BOARD["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    assert variable["current"]["value"] == "${DS_PROMETHEUS}"  # the import fills it in


def test_panel_ids_are_unique_and_every_query_uses_the_chosen_source():
    ids = [panel["id"] for panel in BOARD["panels"]] + [
        inner["id"] for panel in BOARD["panels"] for inner in panel.get("panels", [])
    ]
    assert len(ids) == len(set(ids))
    chosen = {"type": "prometheus", "uid": "${datasource}"}
    for panel in dashboard.panels(BOARD):
        assert panel["datasource"] == chosen, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        assert all(target["datasource"] == chosen for target in panel["targets"])


def test_the_dashboard_shows_what_the_issue_asks_for():
    used = {title: set() for title, _, _ in dashboard.expressions(BOARD)}
    for title, _, expression in dashboard.expressions(BOARD):
        used[title] |= dashboard.metric_names(expression)
    every = set().union(*used.values())
    for name in (
        "rabbitmq_detailed_queue_messages_ready",
        "rabbitmq_detailed_queue_messages_unacked",
        "brokerfleet_queue_in_per_second",
        "brokerfleet_queue_out_per_second",
        "brokerfleet_queue_wait_seconds",
        "brokerfleet_workers_expected",
        "brokerfleet_workers_running",
        "brokerfleet_workers_shed",
        "brokerfleet_workers_moved",
        "brokerfleet_group_paused",
        "brokerfleet_check_status",
        "node_load1",
        "rabbitmq_alarms_memory_used_watermark",
        "rabbitmq_alarms_free_disk_space_watermark",
    ):
        assert name in every


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ("rabbitmq_alarms_memory_used_watermark", {"rabbitmq_alarms_memory_used_watermark"}),
        ('max by (queue) (a_total{queue="by (x)", job=~"n.*"})', {"a_total"}),
        ("sum(rate(a_total[5m] offset 1h)) by (queue) / 1e3", {"a_total"}),
        (
            'node_load1 / on (instance) count by (instance) (cpu{mode="idle"})',
            {"node_load1", "cpu"},
        ),
        ("a unless on(x) group_left(y) b and bool c", {"a", "b", "c"}),
        ("max_over_time(a[1m:10s]) > 0.5 or vector(0)", {"a"}),
    ],
)
def test_metric_names_are_read_from_promql(expression, names):
    assert dashboard.metric_names(expression) == names
