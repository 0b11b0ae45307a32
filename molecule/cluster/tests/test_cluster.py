"""A 3-node RabbitMQ cluster with quorum queues, and two worker hosts sized by their own CPUs
with groups of their own: what an operator would check after site.yml, then a drill that
stops and restarts nodes while a backlog drains and counts what was lost."""

import json
import os
import time
from pathlib import Path

import pytest
import testinfra
import yaml
from conftest import VHOST, done_jobs, publish, running, wait_until

from brokerfleet import sizing

BROKERS = ("mq1", "mq2", "mq3")
WORKER_HOSTS = ("app1", "app2")
NODES = {f"rabbit@{name}": name for name in BROKERS}
JOB_SECONDS = 0.5


@pytest.fixture(scope="session")
def hosts():
    return {name: testinfra.get_host(f"podman://{name}") for name in BROKERS + WORKER_HOSTS}


@pytest.fixture(scope="session")
def inventory():
    """The scenario's group_vars/all and host_vars, as molecule wrote them."""
    directory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    host_vars = {
        path.name: yaml.safe_load(path.read_text()) for path in (directory / "host_vars").iterdir()
    }
    return yaml.safe_load((directory / "group_vars" / "all").read_text()), host_vars


def host_settings(inventory, name):
    group_vars, host_vars = inventory
    return {**group_vars, **host_vars.get(name, {})}


def ctl(host, *args):
    """A rabbitmqctl answer, parsed from its JSON formatter."""
    return json.loads(host.check_output("rabbitmqctl --quiet --formatter json " + " ".join(args)))


def cluster_queues(host):
    columns = "name type leader members online messages_ready messages_unacknowledged"
    return {q["name"]: q for q in ctl(host, "list_queues", "-p", VHOST, columns)}


def union_queues(inventory):
    names = []
    for name in WORKER_HOSTS:
        for group in host_settings(inventory, name)["worker_groups"]:
            names += [q for q in (group["name"], group["name"] + ".dead") if q not in names]
    return names


def test_three_nodes_run_in_one_cluster(hosts):
    for name in BROKERS:
        status = ctl(hosts[name], "cluster_status")
        assert sorted(status["running_nodes"]) == sorted(NODES), (name, status["running_nodes"])
        assert not status["partitions"] and not status["alarms"], status
    config = hosts["mq1"].file("/etc/rabbitmq/rabbitmq.conf").content_string
    assert "cluster_partition_handling = pause_minority" in config
    cookie = hosts["mq2"].file("/var/lib/rabbitmq/.erlang.cookie")
    assert (cookie.user, cookie.mode) == ("rabbitmq", 0o400)


def test_every_host_queue_is_a_quorum_queue_on_every_node(hosts, inventory):
    queues = cluster_queues(hosts["mq1"])
    for name in union_queues(inventory):
        assert name in queues, f"{name} not declared: the broker must declare every host's queues"
        queue = queues[name]
        assert queue["type"] == "quorum", queue
        assert sorted(queue["members"]) == sorted(NODES), queue
        assert sorted(queue["online"]) == sorted(NODES), queue


def test_each_worker_host_is_sized_by_its_own_cpus(hosts, inventory):
    for name in WORKER_HOSTS:
        settings = host_settings(inventory, name)
        budget = settings["fleet_cpus"] * settings["workers_per_cpu"]
        want = sizing.split_budget(budget, settings["worker_groups"])
        processes = running(hosts[name])
        got = {g: sum(1 for p in processes if p.rsplit("-", 1)[0] == g) for g in want}
        assert got == want, (name, processes)


def test_workers_know_every_node_and_spread_over_them(hosts):
    spec = json.loads(hosts["app1"].check_output("cat /etc/brokerfleet/workers/imports.*.json"))
    urls = spec["environment"]["BROKER_URLS"].split(",")
    assert sorted(url.split("@")[-1].split(":")[0] for url in urls) == sorted(BROKERS), urls
    # Each process shuffles the nodes: with 12 consumers, more than one node serves them.
    connections = ctl(hosts["mq1"], "list_connections", "node")
    assert len({c["node"] for c in connections}) > 1, connections


def consumption_gaps(hosts, since):
    """The longest time, in seconds, in which no worker host finished a job, after ``since``."""
    finished = sorted(
        job[2]
        for name in WORKER_HOSTS
        for job in done_jobs(hosts[name], "imports")
        if job[2] > since
    )
    return max((b - a for a, b in zip(finished, finished[1:], strict=False)), default=0.0)


def all_done(hosts):
    return [job[0] for name in WORKER_HOSTS for job in done_jobs(hosts[name], "imports")]


def node_stopped_and_back(hosts, name, action):
    """Stop or restart the node on container ``name``; the seconds it took."""
    started = time.monotonic()
    hosts[name].check_output(f"service rabbitmq-server {action}")
    return time.monotonic() - started


def test_losing_nodes_while_a_backlog_drains_loses_nothing(hosts):
    total = 900
    publish(hosts["app1"], "imports", total, JOB_SECONDS, first_id=1)
    drill_start = float(hosts["app1"].check_output("date +%s.%N"))

    # The node leading the busiest queue goes away, then comes back.
    leader = NODES[cluster_queues(hosts["mq1"])["imports"]["leader"]]
    others = [name for name in BROKERS if name != leader]
    time.sleep(3)
    node_stopped_and_back(hosts, leader, "stop")
    time.sleep(5)
    node_stopped_and_back(hosts, leader, "start")
    # Then another node restarts (a reboot of its service).
    time.sleep(3)
    node_stopped_and_back(hosts, others[0], "restart")

    done = wait_until(lambda: len(set(all_done(hosts))) >= total, timeout=240)
    ids = all_done(hosts)
    lost = set(range(1, total + 1)) - set(ids)
    duplicates = len(ids) - len(set(ids))
    gap = consumption_gaps(hosts, drill_start)
    print(
        f"cluster drill: published {total}, completed {len(set(ids))}, lost {len(lost)}, "
        f"duplicates {duplicates}, longest time without consumption {gap:.1f} s "
        f"(stopped {leader}, the imports leader, then restarted {others[0]})"
    )
    assert done and not lost, f"{len(lost)} jobs lost"
    for name in WORKER_HOSTS:
        states = hosts[name].check_output("supervisorctl status")
        assert "FATAL" not in states and "BACKOFF" not in states, states
    queue = cluster_queues(hosts["mq1"])["imports"]
    assert queue["messages_ready"] == 0 and queue["messages_unacknowledged"] == 0, queue
