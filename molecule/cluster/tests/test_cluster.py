"""A 3-node RabbitMQ cluster with quorum queues, and two worker hosts sized by their own CPUs
with groups of their own: what an operator would check after site.yml, then a drill that
stops and restarts nodes while a backlog drains and counts what was lost."""

import json
import os
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
import testinfra
import yaml
from conftest import (
    VHOST,
    ansible_playbook,
    changed_tasks,
    check,
    done_jobs,
    publish,
    rabbitmqctl,
    running,
    wait_until,
)

from brokerfleet import sizing

BROKERS = ("mq1", "mq2", "mq3")
WORKER_HOSTS = ("app1", "app2")
# Added by the last test, in a re-run; removed after it (molecule does not know it).
NEW_WORKER_HOST = "app3"
NODES = {f"rabbit@{name}": name for name in BROKERS}
JOB_SECONDS = 0.5
# What a re-run that changes the nodes' configuration may change on them: the file, and the
# rolling restart it takes (roles/rabbitmq/tasks/restart.yml).
RESTART_TASKS = {
    "rabbitmq : Render the RabbitMQ configuration",
    "rabbitmq : Drain the node (its clients reconnect to the other nodes)",
    "rabbitmq : Restart the node",
    "rabbitmq : Put the node back into service",
}


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


def cluster_queues(host):
    columns = "name type leader members online messages_ready messages_unacknowledged"
    return {q["name"]: q for q in rabbitmqctl(host, "list_queues", "-p", VHOST, columns)}


def union_queues(inventory):
    names = []
    for name in WORKER_HOSTS:
        for group in host_settings(inventory, name)["worker_groups"]:
            names += [q for q in (group["name"], group["name"] + ".dead") if q not in names]
    return names


def test_three_nodes_run_in_one_cluster(hosts):
    for name in BROKERS:
        status = rabbitmqctl(hosts[name], "cluster_status")
        assert sorted(status["running_nodes"]) == sorted(NODES), (name, status["running_nodes"])
        assert not status["partitions"] and not status["alarms"], status
    config = hosts["mq1"].file("/etc/rabbitmq/rabbitmq.conf").content_string
    assert "cluster_partition_handling = pause_minority" in config
    cookie = hosts["mq2"].file("/var/lib/rabbitmq/.erlang.cookie")
    assert (cookie.user, cookie.mode) == ("rabbitmq", 0o400)
    # The broker check of any node sees the whole cluster.
    code, answer = check(hosts["mq2"], "broker")
    assert code == 0, answer
    nodes = answer["broker"]["nodes"]
    assert sorted((n["name"], n["running"]) for n in nodes) == [(n, True) for n in sorted(NODES)]


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
    connections = rabbitmqctl(hosts["mq1"], "list_connections", "host")
    assert len({tuple(c["host"]) for c in connections}) > 1, connections


def consumption_gaps(workers, since):
    """The longest time, in seconds, in which none of ``workers`` finished a job, after
    ``since``."""
    finished = sorted(
        job[2] for host in workers for job in done_jobs(host, "imports") if job[2] > since
    )
    return max((b - a for a, b in zip(finished, finished[1:], strict=False)), default=0.0)


def all_done(workers):
    """Ids of the imports jobs ``workers`` completed, repeats included."""
    return [job[0] for host in workers for job in done_jobs(host, "imports")]


def service(host, action):
    host.check_output(f"service rabbitmq-server {action}")


def test_losing_nodes_while_a_backlog_drains_loses_nothing(hosts):
    total = 900
    publish(hosts["app1"], "imports", total, JOB_SECONDS, first_id=1)
    drill_start = float(hosts["app1"].check_output("date +%s.%N"))

    # The node leading the busiest queue goes away, then comes back.
    leader = NODES[cluster_queues(hosts["mq1"])["imports"]["leader"]]
    others = [name for name in BROKERS if name != leader]
    time.sleep(3)
    service(hosts[leader], "stop")
    # The other nodes' broker check warns, naming it; the cluster keeps its majority.
    code, answer = check(hosts[others[0]], "broker")
    assert code == 1 and any(leader in problem for problem in answer["problems"]), answer
    time.sleep(3)
    service(hosts[leader], "start")
    # Then another node restarts (a reboot of its service).
    time.sleep(3)
    service(hosts[others[0]], "restart")

    workers = [hosts[name] for name in WORKER_HOSTS]
    done = wait_until(lambda: len(set(all_done(workers))) >= total, timeout=240)
    ids = all_done(workers)
    lost = set(range(1, total + 1)) - set(ids)
    duplicates = len(ids) - len(set(ids))
    gap = consumption_gaps(workers, drill_start)
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


def stop_start_windows(host, since):
    """(stopped, back) times of the node on ``host`` after ``since``, from its own log: from
    "asked to stop" to the next "Server startup complete"."""
    log = host.check_output("cat /var/log/rabbitmq/rabbit@*.log")
    windows, stopped = [], None
    for line in log.splitlines():
        match = re.match(r"(\S+ \S+) \[\w+\] <[\d.]+> (.*)", line)
        if not match:
            continue
        when = datetime.fromisoformat(match[1]).timestamp()
        if when < since:
            continue
        if match[2].startswith("RabbitMQ is asked to stop"):
            stopped = when
        elif match[2].startswith("Server startup complete") and stopped is not None:
            windows.append((stopped, when))
            stopped = None
    return windows


def podman(*args):
    subprocess.run(["podman", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def new_worker_host(tmp_path):
    """A third worker host: a container on the scenario's network, and an inventory file that
    adds it to the workers group beside molecule's inventory."""
    podman("rm", "-f", "-t", "0", NEW_WORKER_HOST)
    podman(
        *("run", "-d", "--name", NEW_WORKER_HOST, "--hostname", NEW_WORKER_HOST),
        *("--network", "brokerfleet-test", "localhost/brokerfleet-test-host:bookworm"),
    )
    extra = tmp_path / "app3.yml"
    extra.write_text(
        yaml.safe_dump(
            {
                "workers": {
                    "hosts": {
                        NEW_WORKER_HOST: {"ansible_connection": "podman", "fleet_cpus": 1},
                    }
                }
            }
        )
    )
    yield testinfra.get_host(f"podman://{NEW_WORKER_HOST}"), extra
    podman("rm", "-f", "-t", "0", NEW_WORKER_HOST)


def test_a_rolling_rerun_adding_a_host_restarts_nodes_one_at_a_time_and_loses_nothing(
    hosts, inventory, new_worker_host
):
    app3, extra_inventory = new_worker_host
    before = {name: running(hosts[name]) for name in WORKER_HOSTS}
    first_id, total = 10_001, 1600
    publish(hosts["app1"], "imports", total, 1, first_id=first_id)
    since = float(hosts["mq1"].check_output("date +%s.%N"))

    # A broker setting that needs every node to restart, and a new worker host, in one run.
    output = ansible_playbook(
        "site.yml", options=("-i", str(extra_inventory)), rabbitmq_memory_fraction=0.35
    )
    for name in BROKERS:
        config = hosts[name].file("/etc/rabbitmq/rabbitmq.conf").content_string
        assert "vm_memory_high_watermark.relative = 0.35" in config, name
    windows = sorted(w for name in BROKERS for w in stop_start_windows(hosts[name], since))
    assert len(windows) == 3, (windows, output)
    for (_, back), (stopped, _) in zip(windows, windows[1:], strict=False):
        assert stopped >= back, f"two nodes were down at once: {windows}"

    # The other worker hosts' processes were left alone: same names, same PIDs.
    for name in WORKER_HOSTS:
        assert running(hosts[name]) == before[name], name
    settings = {**inventory[0], "fleet_cpus": 1}
    budget = settings["fleet_cpus"] * settings["workers_per_cpu"]
    want = sizing.split_budget(budget, settings["worker_groups"])
    assert wait_until(lambda: len(running(app3)) == sum(want.values()), 30), running(app3)

    workers = [hosts[name] for name in WORKER_HOSTS] + [app3]
    wanted = set(range(first_id, first_id + total))
    done = wait_until(lambda: wanted <= set(all_done(workers)), timeout=300)
    ids = [i for i in all_done(workers) if i in wanted]
    gap = consumption_gaps(workers, since)
    down = [round(back - stopped, 1) for stopped, back in windows]
    lost, duplicates = len(wanted - set(ids)), len(ids) - len(set(ids))
    print(
        f"rolling re-run: {total} jobs of 1 s, nodes down {down} s one at a time; lost {lost}, "
        f"duplicates {duplicates}, longest time without consumption {gap:.1f} s"
    )
    assert done, f"{lost} jobs lost"

    # The scenario has no idempotence step (it would cost a converge of five hosts): this run
    # is its second converge. It changed nothing on the worker hosts it found, and on the
    # nodes only their configuration and the restart that takes.
    changed = changed_tasks(output)
    print(f"changed by the re-run: {changed}")
    assert not [changed[name] for name in WORKER_HOSTS if name in changed], changed
    for name in BROKERS:
        assert set(changed.get(name, [])) <= RESTART_TASKS, (name, changed.get(name))
