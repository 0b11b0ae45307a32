"""Re-runs of site.yml while a backlog drains. To scale: converge at fleet_cpus 2, then 8, then
1; counts follow the sizing filters, processes that stay keep their PIDs, surplus ones stop
after their current job (a 35 s one included), and no job is lost or done twice. Then a paused
group: a re-run and cron's relauncher keep it stopped until it is resumed."""

import re
import time

from conftest import (
    STATE,
    Drill,
    ansible_playbook,
    check,
    converge,
    done_ids,
    of_group,
    publish,
    queues,
    running,
    wait_until,
)

from brokerfleet import sizing

JOB_SECONDS = 2
LONG_JOB, LONG_JOB_SECONDS = 900_000, 35


def expected(group_vars, cpus):
    # Memory does not bind on the test hosts (GBs of RAM for a budget of at most 32).
    return sizing.split_budget(cpus * group_vars["workers_per_cpu"], group_vars["worker_groups"])


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

    # A job longer than the group's max_job_seconds (60 s, from job_seconds 0.2) is refused
    # and dead-lettered; one of 35 s, taken before the scale-down that stops every thumbnails
    # worker, is finished by its worker, once, rather than killed (stopwaitsecs 70).
    worker.check_output("brokerfleet-worker publish --group thumbnails --count 1 --seconds 61")
    assert wait_until(lambda: queues(broker)["thumbnails.dead"]["messages_ready"] == 1, 30)
    publish(worker, "thumbnails", 1, LONG_JOB_SECONDS, first_id=LONG_JOB)
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
    done = done_ids(worker, "imports")
    left = queues(broker)["imports"]
    print(f"{len(done)} jobs done, {left['messages_ready']} still queued, of {total}")
    assert len(done) == len(set(done)), "jobs done twice"
    assert set(done) <= set(range(1, total + 1))
    assert left["messages_unacknowledged"] == 0
    assert len(done) + left["messages_ready"] == total, "jobs lost"
    log = worker.check_output("cat /var/log/supervisor/supervisord.log")
    assert "SIGKILL" not in log, "a worker was killed instead of finishing its job"
    finished = worker.run(
        "grep -l 'SIGTERM: finished the current job' /var/log/brokerfleet/imports/*"
    )
    print(f"{len(finished.stdout.split())} stopped workers finished a job after SIGTERM")
    worker.run("pkill -f '^sleep 60$'")  # cron's relauncher may run again

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


def test_a_paused_group_stops_gracefully_and_stays_stopped_until_resumed(broker, worker):
    # digest's one worker (at fleet_cpus 1 now), 8 jobs of 2 s: it is mid-job when paused.
    drill = Drill("pause, then resume a group", broker, worker, "digest", 8, 2, first_id=600_000)
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
        assert check(broker, "broker")[0] == 0
        # A re-run of the play keeps the pause, and so does cron's relauncher, which runs at
        # least once meanwhile.
        last_check = f"stat -c %Y {STATE}/last-workers.json"
        before = int(worker.check_output(last_check))
        ansible_playbook("site.yml", options=("--limit", "worker"), fleet_cpus=1)
        assert wait_until(lambda: int(worker.check_output(last_check)) > before, 60)
        assert not of_group(running(worker), "digest")
    finally:
        drill.fault()
        worker.check_output("brokerfleet-check resume digest")
        broker.check_output("brokerfleet-check resume digest")
    drill.finish(lambda: len(of_group(running(worker), "digest")) == 1, 30)
