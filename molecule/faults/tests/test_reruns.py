"""Re-runs of site.yml while a backlog drains. To scale: converge at fleet_cpus 2, then 8, then
1; counts follow the sizing filters, processes that stay keep their PIDs, surplus ones stop
after their current job (one longer than 30 s included), and no job is lost or done twice.
Then a re-run that restarts the broker (a new memory watermark) while jobs run: every worker
finishes its job before the restart, none runs twice, and a group paused meanwhile stays
paused."""

import datetime
import re
import time

from conftest import (
    DRILLS,
    STATE,
    Drill,
    ansible_playbook,
    check,
    converge,
    done_ids,
    done_jobs,
    of_group,
    publish,
    queues,
    rabbitmqctl,
    running,
    wait_until,
)

from brokerfleet import sizing

JOB_SECONDS = 2
LONG_JOB = 900_000


def expected(group_vars, cpus):
    # Memory does not bind on the test hosts (GBs of RAM for a budget of at most 32).
    return sizing.split_budget(cpus * group_vars["workers_per_cpu"], group_vars["worker_groups"])


def stamp(line):
    """The Unix time of a supervisord log line ('2026-11-25 08:07:41,065 INFO ...', UTC)."""
    moment = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return moment.replace(tzinfo=datetime.UTC).timestamp()


def supervisord_log_since(worker, start):
    """The lines supervisord logged from ``start`` (Unix time) on: the fault drills before
    killed workers on purpose."""
    lines = worker.check_output("cat /var/log/supervisor/supervisord.log").splitlines()
    return [line for line in lines if line[:4].isdigit() and stamp(line) >= start]


def previewed(output):
    """The supervisord programs a --check --diff run would add and remove (its diff of the
    groups' files)."""
    added = set(re.findall(r"^\+\[program:([\w-]+)\]$", output, re.MULTILINE))
    removed = set(re.findall(r"^-\[program:([\w-]+)\]$", output, re.MULTILINE))
    return added, removed


def summarised(output, verb):
    """The programs the summary play says the run ``verb`` ("would start", "started", ...)."""
    lines = re.findall(rf"^\s*{verb}: ([\w, -]+)$", output, re.MULTILINE)
    return {name for line in lines for name in line.split(", ")}


def counts(worker, groups):
    processes = running(worker)
    return {g["name"]: len(of_group(processes, g["name"])) for g in groups}


def test_rerun_scales_groups_without_restarting_or_losing_anything(broker, worker, group_vars):
    groups = group_vars["worker_groups"]
    assert counts(worker, groups) == expected(group_vars, 2)
    before = running(worker)

    # The preview of the re-run: check mode changes nothing, and says what would start.
    files = "md5sum /etc/supervisor/conf.d/brokerfleet-*.conf /etc/brokerfleet/fleet.json"
    sums = worker.check_output(files)
    preview = ansible_playbook("site.yml", options=("--check", "--diff"), fleet_cpus=8)
    assert worker.check_output(files) == sums
    assert running(worker) == before
    added, removed = previewed(preview)
    assert added and not removed, preview
    # ... and the summary names them: what would start, and that nothing would restart.
    assert summarised(preview, "would start") == added, preview
    assert not summarised(preview, "would restart") | summarised(preview, "would stop")
    # The summary play prints the plan per host and group.
    for name, count in expected(group_vars, 8).items():
        assert f"{name}: {count}, prefetch" in preview, preview

    # A backlog the 6 imports workers are draining while the fleet grows.
    publish(worker, "imports", 200, JOB_SECONDS, first_id=1)
    started = time.monotonic()
    output = converge(fleet_cpus=8)
    scale_up_seconds = time.monotonic() - started
    assert summarised(output, "started") == added, output

    grown = expected(group_vars, 8)
    assert wait_until(lambda: counts(worker, groups) == grown, 60), counts(worker, groups)
    after_up = running(worker)
    # Every process that ran before still runs with the same PID: nothing was restarted.
    assert {name: after_up.get(name) for name in before} == before
    # The run did what the preview said.
    assert set(after_up) == set(before) | added

    # A job longer than the group's max_job_seconds (300 s, molecule.yml) is refused and
    # dead-lettered. One that outlasts the next converge's way to its scale-down, which stops
    # every thumbnails worker, is finished by its worker, once, rather than killed: its length
    # is the scale-up converge's time plus a margin (at least 35 s).
    max_job = group_vars["worker_groups"][1]["max_job_seconds"]
    publish(worker, "thumbnails", 1, max_job + 1, first_id=LONG_JOB - 1)
    assert wait_until(lambda: queues(broker)["thumbnails.dead"]["messages_ready"] == 1, 30)
    long_job_seconds = min(max_job - 10, max(35, round(scale_up_seconds) + 20))
    publish(worker, "thumbnails", 1, long_job_seconds, first_id=LONG_JOB)
    assert wait_until(lambda: queues(broker)["thumbnails"]["messages_unacknowledged"] == 1, 30)

    # Keep all imports workers busy through the next converge, whose handler then stops the
    # surplus ones in the middle of jobs; each must finish and ack its job first.
    busy_rate = grown["imports"] / JOB_SECONDS
    backlog = queues(broker)["imports"]["messages_ready"]
    # The scale-down handler stops surplus workers one by one while the others keep working,
    # so a third more than the scale-up converge drained, plus a margin.
    top_up = max(0, int(busy_rate * scale_up_seconds * 1.3) + 60 - backlog)
    publish(worker, "imports", top_up, JOB_SECONDS, first_id=201)
    total = 200 + top_up
    scale_down_started = time.time()
    converge(fleet_cpus=1)
    left = queues(broker)["imports"]
    print(f"scale-down converge ended with {left['messages_ready']} jobs still queued")

    shrunk = expected(group_vars, 1)
    assert counts(worker, groups) == shrunk
    after_down = running(worker)
    kept = {name: pid for name, pid in after_up.items() if name in after_down}
    assert {name: after_down[name] for name in kept} == kept
    assert after_down["digest-00"] == before["digest-00"]
    assert done_ids(worker, "thumbnails").count(LONG_JOB) == 1
    # ... and it was still running when the converge began to stop the thumbnails workers.
    [finished] = [job[2] for job in done_jobs(worker, "thumbnails") if job[0] == LONG_JOB]
    since = supervisord_log_since(worker, scale_down_started)
    stopping = [stamp(line) for line in since if "waiting for thumbnails-" in line]
    first_stop = min(stopping, default=None)
    assert first_stop and finished > first_stop, f"the {long_job_seconds} s job was not in flight"
    assert not queues(broker)["thumbnails"]["messages_unacknowledged"]

    # Nothing lost: every job is done once or still queued. The imports workers left stop the
    # way the scale-down stopped the others (each finishes its job first), with cron held off
    # so the relauncher does not start them again meanwhile; draining the rest would take
    # minutes and prove nothing more.
    worker.check_output(
        "setsid flock /run/brokerfleet-check-workers.lock sleep 60 </dev/null >/dev/null 2>&1 &"
    )
    time.sleep(2)  # until flock holds it (after any run in progress)
    worker.check_output("supervisorctl stop " + " ".join(of_group(running(worker), "imports")))
    done = [i for i in done_ids(worker, "imports") if i <= total]  # (drills use 100,000 up)
    left = queues(broker)["imports"]
    print(f"{len(done)} jobs done, {left['messages_ready']} still queued, of {total}")
    assert len(done) == len(set(done)), "jobs done twice"
    assert set(done) <= set(range(1, total + 1))
    assert left["messages_unacknowledged"] == 0
    assert len(done) + left["messages_ready"] == total, "jobs lost"
    broker.check_output("rabbitmqctl purge_queue -p brokerfleet imports")  # counted as queued
    since = supervisord_log_since(worker, scale_down_started)
    assert not [line for line in since if "SIGKILL" in line], "a worker was killed mid-job"
    finished = worker.run(
        "grep -l 'SIGTERM: finished the current job' /var/log/brokerfleet/imports/*"
    )
    print(f"{len(finished.stdout.split())} stopped workers finished a job after SIGTERM")
    worker.run("pkill -f '^sleep 60$'")  # cron's relauncher may run again
    worker.run("brokerfleet-check workers")  # as cron's next run would: imports start again

    # The job refused as too long waits in thumbnails.dead: the broker check says so, and how
    # to requeue it, which works (thumbnails has no worker left at fleet_cpus 1 to take it).
    code, answer = check(broker, "broker")
    [problem] = [p for p in answer["problems"] if p.startswith("queue thumbnails.dead: 1 ")]
    assert code in (1, 2) and "brokerfleet-worker move --group thumbnails --from dead" in problem
    moved = worker.check_output("brokerfleet-worker move --group thumbnails --from dead")
    assert "moved 1 job" in moved
    assert queues(broker)["thumbnails.dead"]["messages_ready"] == 0
    assert queues(broker)["thumbnails"]["messages_ready"] == 1
    broker.check_output("rabbitmqctl purge_queue -p brokerfleet thumbnails")


def watermark(broker):
    return rabbitmqctl(broker, "status")["vm_memory_high_watermark_setting"]


def longest_idle(jobs):
    """The longest time, in seconds, during which none of ``jobs`` (id, started, finished) ran."""
    idle, end = 0.0, None
    for _, started, finished in sorted(jobs, key=lambda job: job[1]):
        if end is not None:
            idle = max(idle, started - end)
        end = finished if end is None else max(end, finished)
    return round(idle, 1)


def test_a_broker_restart_by_site_yml_finishes_jobs_first_and_keeps_a_pause(
    broker, worker, group_vars
):
    """A re-run that changes the single broker's configuration restarts it: every worker first
    finishes and acks its job and stops, then the broker restarts and the workers start again,
    so no job runs twice. A group paused for maintenance stays paused through that run and
    through cron's relauncher, until it is resumed."""
    imports = expected(group_vars, 1)["imports"]
    assert wait_until(lambda: len(of_group(running(worker), "imports")) == imports, 30)
    # digest's one worker (at fleet_cpus 1 now), 8 jobs of 2 s: it is mid-job when paused.
    paused = Drill("pause, re-run, resume a group", broker, worker, "digest", 8, 2, 600_000)
    pause = "brokerfleet-check pause digest --reason 'fault drill'"
    worker.check_output(pause)  # returns once its worker has finished its job and stopped
    broker.check_output(pause)  # the broker host records it: its check expects the backlog
    try:
        assert not of_group(running(worker), "digest")
        left = queues(broker)["digest"]
        assert left["messages_unacknowledged"] == 0 and left["messages_ready"] > 0
        # The broker check says why the backlog waits, without the no-consumer CRITICAL (its
        # statistics lag a few seconds behind).
        assert wait_until(lambda: "paused" in str(check(broker, "broker")), 30)
        code, answer = check(broker, "broker")
        assert code == 0, answer

        # The imports workers (3 at fleet_cpus 1, 100 s of work) are mid-job when the run
        # changes the broker's memory watermark (0.4 by default), which takes a restart.
        restart = Drill(
            "site.yml restarts the broker mid-drain", broker, worker, "imports", 150, 2, 800_000
        )
        assert watermark(broker) == {"relative": 0.4}
        last_check = f"stat -c %Y {STATE}/last-workers.json"
        before = int(worker.check_output(last_check))
        restart.fault()
        converge(fleet_cpus=1, rabbitmq_memory_fraction=0.35)
        assert watermark(broker) == {"relative": 0.35}
        # The run quiesced the groups that were not paused: imports, not digest.
        log = worker.check_output("cat /var/log/brokerfleet/check.log")
        [quiesced] = re.findall(r"(?<!un)quiesced ([\w, -]+) \(broker restart by site.yml\)", log)
        assert "imports" in quiesced.split(", ") and "digest" not in quiesced
        back = restart.finish(lambda: len(of_group(running(worker), "imports")) == imports, 60)
        assert back < 300
        assert DRILLS[-1][5] == 0, "jobs ran twice: the broker restarted under running jobs"
        ran = [job for job in done_jobs(worker, "imports") if job[0] in set(restart.ids)]
        idle = longest_idle(ran)
        print(f"no imports job ran for {idle} s around the broker restart")
        assert idle > 5, "the backlog was gone before the restart: no job was in flight"

        # The pause held through the run's quiesce, and holds through cron's relauncher.
        assert not of_group(running(worker), "digest")
        assert wait_until(lambda: int(worker.check_output(last_check)) > before, 60)
        assert not of_group(running(worker), "digest")
    finally:
        paused.fault()
        worker.check_output("brokerfleet-check resume digest")
        broker.check_output("brokerfleet-check resume digest")
    paused.finish(lambda: len(of_group(running(worker), "digest")) == 1, 30)
