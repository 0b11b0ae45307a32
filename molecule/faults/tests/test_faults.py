"""Fault drills at fleet_cpus 2 (6 imports workers): each runs while a backlog of confirmed,
persistent jobs drains through the reference worker, then counts every job: published =
completed + still queued (0 lost), duplicates reported, and the seconds until the fleet was
back at its size by itself. The session prints the table README shows (molecule/conftest.py
Drill). The pause drill runs after the re-runs (test_reruns.py)."""

import subprocess
import time

import pytest
from conftest import (
    Drill,
    done_ids,
    in_background,
    of_group,
    queues,
    running,
    wait_until,
)

from brokerfleet import sizing

GROUP = "imports"  # job_seconds 2, max_job_seconds 60 (molecule.yml)
CRON_PERIOD = 60
PUBLISHER = (
    f"brokerfleet-worker publish --group {GROUP} --count {{count}} --seconds {{seconds}}"
    " --first-id {first_id}"
)


@pytest.fixture(scope="module")
def sizes(group_vars):
    budget = group_vars["fleet_cpus"] * group_vars["workers_per_cpu"]
    return sizing.split_budget(budget, group_vars["worker_groups"])


def fleet_size(worker):
    processes = running(worker)
    return {group: len(of_group(processes, group)) for group in ("imports", "thumbnails", "digest")}


def worker_processes(worker):
    """Reference worker processes on the host, supervised or not ([b]: not this shell)."""
    return int(worker.run("pgrep -c -f '[b]rokerfleet-worker$' || true").stdout or 0)


def test_a_worker_killed_mid_job_is_back_and_its_job_done(broker, worker, sizes):
    drill = Drill("kill -9 a worker mid-job", broker, worker, GROUP, 48, 1, first_id=100_000)
    victim = of_group(running(worker), GROUP)[f"{GROUP}-00"]
    drill.fault()
    worker.check_output(f"kill -9 {victim}")
    assert drill.finish(lambda: fleet_size(worker) == sizes, 30) < 10


def test_a_killed_supervisord_is_back_within_a_cron_period_without_orphans(broker, worker, sizes):
    drill = Drill("kill -9 supervisord", broker, worker, GROUP, 60, 1, first_id=200_000)
    drill.fault()
    worker.check_output("kill -9 $(cat /var/run/supervisord.pid)")
    # Its workers get SIGTERM from the kernel (brokerfleet-exec), finish their job and exit,
    # rather than run on unsupervised beside the fleet the relauncher starts.
    assert wait_until(lambda: worker_processes(worker) == 0, 30)
    recovery = drill.finish(lambda: fleet_size(worker) == sizes, CRON_PERIOD + 45)
    assert "supervisord was down: started it" in worker.check_output(
        "cat /var/log/brokerfleet/check.log"
    )
    assert worker_processes(worker) == sum(sizes.values())
    assert recovery < CRON_PERIOD + 30


def test_a_broker_restart_mid_drain_loses_nothing_and_workers_reconnect(broker, worker, sizes):
    drill = Drill(
        "restart the broker (and a publisher)", broker, worker, GROUP, 60, 1, first_id=300_000
    )
    # A publisher is mid-way when the broker goes: a disk alarm holds its first messages
    # unconfirmed (the broker stops reading from publishers, not consumers) until the restart,
    # which ends the alarm (set_disk_free_limit lasts until then). It must send them again.
    broker.check_output("rabbitmqctl set_disk_free_limit 100000GB")  # above any free disk
    assert wait_until(lambda: broker.run("rabbitmq-diagnostics -q check_local_alarms").rc, 30)
    in_background(worker, PUBLISHER.format(count=3000, seconds=0, first_id=310_000), "publisher")
    drill.ids += range(310_000, 313_000)
    time.sleep(3)
    assert "published" not in worker.check_output("cat /tmp/publisher.log")
    drill.fault()
    broker.check_output("service rabbitmq-server restart")
    assert broker.run("rabbitmq-diagnostics -q check_local_alarms").rc == 0

    def reconnected():
        consumers = queues(broker)[GROUP]["consumers"]
        published = "published 3000" in worker.run("cat /tmp/publisher.log").stdout
        return published and consumers == sizes[GROUP] and fleet_size(worker) == sizes

    drill.finish(reconnected, 90)
    # The publisher and every worker logged why they lost the broker and kept trying (with
    # backoff; no worker ended FATAL).
    assert "no broker connection" in worker.check_output("cat /tmp/publisher.log")
    logs = worker.check_output(f"cat /var/log/brokerfleet/{GROUP}/*.log")
    assert logs.count("no broker connection") >= sizes[GROUP]


def test_a_disk_alarm_blocks_publishers_while_consumers_drain(broker, worker):
    drill = Drill("disk alarm on the broker", broker, worker, GROUP, 60, 1, first_id=400_000)
    limit = broker.check_output("awk '/^disk_free_limit/ {print $3}' /etc/rabbitmq/rabbitmq.conf")
    broker.check_output("rabbitmqctl set_disk_free_limit 100000GB")  # above any free disk
    try:
        assert wait_until(lambda: broker.run("rabbitmq-diagnostics -q check_local_alarms").rc, 30)
        done_before = len(done_ids(worker, GROUP))
        publisher = PUBLISHER.format(count=20, seconds=0.1, first_id=450_000)
        in_background(worker, publisher, "blocked-publisher")
        time.sleep(8)
        # Publishers wait while consumers keep draining.
        assert "published" not in worker.run("cat /tmp/blocked-publisher.log").stdout
        assert len(done_ids(worker, GROUP)) > done_before
    finally:
        drill.fault()
        broker.check_output(f"rabbitmqctl set_disk_free_limit {limit}")

    def published():
        return "published 20" in worker.run("cat /tmp/blocked-publisher.log").stdout

    drill.ids = [*drill.ids, *range(450_000, 450_020)]
    drill.finish(published, 60)


def test_killing_a_random_worker_every_2_s_through_5000_jobs_loses_nothing(broker, worker, sizes):
    # Jobs of 0.05 s: 6 workers take about 45 s, time for some 20 kills.
    drill = Drill("kill -9 a random worker every 2 s", broker, worker, GROUP, 5000, 0.05, 500_000)
    drill.fault()
    kills = 0
    while queues(broker)[GROUP]["messages_ready"] and kills < 60:
        pids = list(of_group(running(worker), GROUP).values())
        if pids:
            worker.run(f"kill -9 {pids[kills % len(pids)]}")
            kills += 1
        time.sleep(2)
    drill.name += f" ({kills} kills)"
    assert kills >= 10
    drill.finish(lambda: fleet_size(worker) == sizes, 30)


def test_a_restarted_worker_host_comes_back_with_its_fleet(broker, worker, sizes):
    at_boot = worker.check_output("ls /etc/rc2.d | sed 's/^S[0-9]*//'").split()
    assert {"cron", "supervisor"} <= set(at_boot)
    drill = Drill("restart the worker host", broker, worker, GROUP, 60, 1, first_id=700_000)
    drill.fault()
    # Everything on the host dies at once (the container's processes get SIGKILL after 2 s).
    restart = ["podman", "restart", "--time", "2", "worker"]
    subprocess.run(restart, check=True, capture_output=True)
    # The test hosts have no init: do what sysvinit does at boot, start the runlevel's
    # services in order. Only what the roles enabled at boot starts.
    worker.check_output("for s in /etc/rc2.d/S*; do $s start; done")
    drill.finish(lambda: fleet_size(worker) == sizes, 60)
