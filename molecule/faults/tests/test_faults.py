"""Fault drills at fleet_cpus 2 (6 imports workers): each runs while a backlog of confirmed,
persistent jobs drains through the reference worker, then counts every job: published =
completed + still queued (0 lost), duplicates reported, and the seconds until the fleet was
back at its size by itself. The module prints the table README shows."""

import shlex
import time

import pytest
from conftest import (
    ansible_playbook,
    check,
    done_ids,
    of_group,
    publish,
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
ROWS = []  # one per drill, printed as a table when the module ends


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    header = ("drill", "published", "completed", "queued", "lost", "duplicates", "recovery s")
    lines = [header, *ROWS]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    print()
    for line in lines:
        print("| " + " | ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)) + " |")


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


def in_background(host, command, name):
    """Start ``command`` on ``host`` without waiting; its output goes to /tmp/<name>.log."""
    host.check_output(f"setsid sh -c {shlex.quote(command)} </dev/null >/tmp/{name}.log 2>&1 &")


def unsettled(worker):
    """supervisord processes that gave up or keep failing to start."""
    states = worker.run("supervisorctl status").stdout
    return [line for line in states.splitlines() if " FATAL " in line or " BACKOFF " in line]


class Drill:
    """A backlog of ``count`` jobs of ``seconds`` (ids from ``first_id``) draining through
    GROUP; `fault()` starts the clock; `finish()` waits until the fleet is back and the queue
    drained, counts the jobs and adds the row."""

    def __init__(self, name, broker, worker, count, seconds, first_id):
        self.name, self.broker, self.worker = name, broker, worker
        self.ids = list(range(first_id, first_id + count))
        publish(worker, GROUP, count, seconds, first_id)
        assert wait_until(lambda: queues(broker)[GROUP]["messages_unacknowledged"], 30)
        time.sleep(seconds / 2)  # every worker is mid-job
        self.started = None

    def fault(self):
        self.started = time.monotonic()

    def finish(self, recovered, timeout):
        back = wait_until(recovered, timeout, step=0.5)
        recovery = round(time.monotonic() - self.started, 1)
        assert back, f"{self.name}: the fleet was not back within {timeout} s"

        def drained():
            queue = queues(self.broker)[GROUP]
            return not queue["messages_ready"] + queue["messages_unacknowledged"]

        wait_until(drained, 180)
        wanted = set(self.ids)
        done = [i for i in done_ids(self.worker, GROUP) if i in wanted]
        queue = queues(self.broker)[GROUP]
        queued = queue["messages_ready"] + queue["messages_unacknowledged"]
        completed, duplicates = len(set(done)), len(done) - len(set(done))
        lost = len(self.ids) - completed - queued
        ROWS.append((self.name, len(self.ids), completed, queued, lost, duplicates, recovery))
        print(ROWS[-1])
        assert lost == 0, f"{self.name}: {lost} jobs lost"
        assert not unsettled(self.worker)
        return recovery


def test_a_worker_killed_mid_job_is_back_and_its_job_done(broker, worker, sizes):
    drill = Drill("kill -9 a worker mid-job", broker, worker, 48, 1, first_id=100_000)
    victim = of_group(running(worker), GROUP)[f"{GROUP}-00"]
    drill.fault()
    worker.check_output(f"kill -9 {victim}")
    assert drill.finish(lambda: fleet_size(worker) == sizes, 30) < 10


def test_a_killed_supervisord_is_back_within_a_cron_period_without_orphans(broker, worker, sizes):
    drill = Drill("kill -9 supervisord", broker, worker, 60, 1, first_id=200_000)
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
    drill = Drill("restart the broker (and a publisher)", broker, worker, 60, 1, first_id=300_000)
    # A publisher is mid-way through 3,000 jobs when the broker goes: it sends again what was
    # not confirmed once the broker is back.
    in_background(worker, PUBLISHER.format(count=3000, seconds=0, first_id=310_000), "publisher")
    drill.ids += range(310_000, 313_000)
    time.sleep(1)
    drill.fault()
    broker.check_output("service rabbitmq-server restart")

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
    drill = Drill("disk alarm on the broker", broker, worker, 60, 1, first_id=400_000)
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
    drill = Drill("kill -9 a random worker every 2 s", broker, worker, 5000, 0.05, 500_000)
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


def test_a_paused_group_stops_gracefully_and_stays_stopped_until_resumed(broker, worker, sizes):
    drill = Drill("pause, then resume a group", broker, worker, 36, 1, first_id=600_000)
    pause = f"brokerfleet-check pause {GROUP} --reason 'fault drill'"
    worker.check_output(pause)  # returns once its workers have stopped
    broker.check_output(pause)  # the broker host records it: its check expects the backlog
    try:
        assert not of_group(running(worker), GROUP)
        left = queues(broker)[GROUP]
        assert left["messages_unacknowledged"] == 0 and left["messages_ready"] > 0
        # The workers check (cron's, run by hand) leaves it stopped; the broker check says
        # why the backlog waits, without the no-consumer CRITICAL (its statistics lag a few
        # seconds behind).
        worker.run("brokerfleet-check workers")
        assert not of_group(running(worker), GROUP)
        assert wait_until(lambda: "paused" in str(check(broker, "broker")), 30)
        code, answer = check(broker, "broker")
        assert code == 0, answer
        # A re-run of the play keeps the pause.
        ansible_playbook("site.yml", options=("--limit", "worker"))
        assert not of_group(running(worker), GROUP)
    finally:
        drill.fault()
        worker.check_output(f"brokerfleet-check resume {GROUP}")
        broker.check_output(f"brokerfleet-check resume {GROUP}")
    drill.finish(lambda: fleet_size(worker) == sizes, 30)
