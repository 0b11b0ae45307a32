"""Drills for brokerfleet-check, run by cron every minute on both hosts: dead workers and a
stopped group come back, and a disk alarm is reported, within one cron period (a killed
supervisord: the faults scenario); under load the least important group shrinks, and grows
back when the load falls (runs by hand, with cron's settings and cron held off: cron running
the check is drilled already); a queue left without consumers is reported; the status report
shows queues, rates and workers."""

import json
import shlex
import time

from conftest import (
    ansible_playbook,
    check,
    cron_runs,
    of_group,
    publish,
    running,
    wait_until,
)

CRON_PERIOD = 60
EXPECTED = {"imports": 3, "thumbnails": 1, "reports": 2, "awkward": 1}  # molecule.yml
DRILL_LOAD = "/var/lib/brokerfleet-check/drill-load"  # fleet_checks_load_source in molecule.yml
DRILL_BACKLOG = "/var/lib/brokerfleet-check/drill-backlog.json"  # fleet_checks_backlog_source


def complete(worker):
    processes = running(worker)
    return all(len(of_group(processes, g)) == n for g, n in EXPECTED.items()) and processes


def check_log(host):
    return host.run("cat /var/log/brokerfleet/check.log").stdout


def hold_off_cron(worker, seconds):
    """Hold the workers check's lock for ``seconds``: cron's runs (flock -n) skip meanwhile,
    so a drill's runs by hand are the only ones."""
    worker.check_output(
        f"setsid flock /run/brokerfleet-check-workers.lock sleep {seconds}"
        " </dev/null >/dev/null 2>&1 &"
    )
    time.sleep(2)  # until flock holds it (after any run in progress)


def run_workers_check(worker):
    """One run of the workers check by hand: the same settings as cron's (checks.json), the
    drill files included; cron running it is drilled above."""
    worker.run("brokerfleet-check workers")


def test_one_cron_minute_brings_back_killed_workers_and_reports_a_disk_alarm(broker, worker):
    # One wait for cron serves both hosts: the worker host's run brings back two killed
    # workers and a stopped group; the broker host's run reports a disk alarm.
    before = running(worker)
    killed = list(of_group(before, "imports").values())[:2]
    worker.check_output(f"kill -9 {' '.join(map(str, killed))}")
    worker.check_output("supervisorctl stop thumbnails-00")  # the whole group
    limit = broker.check_output("awk '/^disk_free_limit/ {print $3}' /etc/rabbitmq/rabbitmq.conf")
    broker.check_output("rabbitmqctl set_disk_free_limit 100000GB")  # above any free disk
    try:
        assert cron_runs((broker, "broker"), (worker, "workers"), timeout=CRON_PERIOD + 15)
        # (A run under way at the kill, or before the alarm was up, missed it: then the next.)
        assert wait_until(lambda: "disk space alarm on rabbit@" in check_log(broker), 75)
        code, answer = check(broker, "broker")
        assert (code, answer["status"]) == (2, "CRITICAL")
        assert any(p.startswith("disk space alarm on rabbit@") for p in answer["problems"])
    finally:
        broker.check_output(f"rabbitmqctl set_disk_free_limit {limit}")
    assert wait_until(lambda: complete(worker), CRON_PERIOD + 15)
    assert not set(killed) & set(running(worker).values())
    assert "started thumbnails-00 (was STOPPED)" in check_log(worker)
    assert "workers" not in broker.check_output("cat /etc/cron.d/brokerfleet-check")
    assert wait_until(lambda: check(broker, "broker")[0] == 0, 30)
    for host, name in ((broker, "broker"), (worker, "workers")):
        code, answer = check(host, name)
        assert (code, answer["status"]) == (0, "OK"), answer
    assert set(answer["groups"]) == set(EXPECTED)


def test_the_alert_command_hears_of_the_restarts_through_cron(worker):
    # fleet_checks_alert_command (molecule.yml), a % in it and all: cron ran it with the news.
    alerts = worker.file("/var/lib/brokerfleet-check/alerts at 100%.log")
    assert wait_until(
        lambda: alerts.exists and "started thumbnails-00" in alerts.content_string, 15
    )


def test_load_guard_sheds_the_least_important_group_then_gives_it_back(worker):
    important = {**of_group(running(worker), "imports"), **of_group(running(worker), "reports")}
    hold_off_cron(worker, 40)
    worker.check_output(f"echo 0.95 > {DRILL_LOAD}")
    try:
        run_workers_check(worker)
        assert wait_until(lambda: not of_group(running(worker), "thumbnails"), 15)
        worker.check_output(f"echo 0.2 > {DRILL_LOAD}")
        run_workers_check(worker)
        assert wait_until(lambda: of_group(running(worker), "thumbnails"), 15)
    finally:
        worker.run(f"rm -f {DRILL_LOAD}")
    # The more important groups were never touched: same processes, same PIDs.
    now = running(worker)
    assert {name: now.get(name) for name in important} == important
    log = check_log(worker)
    assert "load guard: shed one worker of thumbnails" in log
    assert "load guard: restore one worker of thumbnails" in log


def drill_backlog(worker, **jobs):
    """A broker sample for autoscale with ``jobs`` waiting per queue, as of now."""
    queues = {queue: {"ready": count, "unacked": 0} for queue, count in jobs.items()}
    sample = json.dumps({"time": time.time(), "queues": queues})
    worker.check_output(f"echo {shlex.quote(sample)} > {DRILL_BACKLOG}")


def test_autoscale_moves_workers_to_a_long_backlog_then_gives_them_back(worker):
    # 1000 imports x 2 s / 3 workers: 11 minutes, beyond the 60 s horizon (molecule.yml).
    hold_off_cron(worker, 60)
    drill_backlog(worker, imports=1000)
    try:
        run_workers_check(worker)
        assert wait_until(lambda: len(of_group(running(worker), "imports")) > 3, 15)
        assert not of_group(running(worker), "thumbnails")  # the least important idle group
        drill_backlog(worker)  # every queue idle
        for _ in range(3):  # one worker back a run, at most as many as moved
            if complete(worker):
                break
            run_workers_check(worker)
            wait_until(lambda: complete(worker), 5)
        assert wait_until(lambda: complete(worker), 15)
    finally:
        worker.run(f"rm -f {DRILL_BACKLOG}")
    log = check_log(worker)
    assert "autoscale: move one worker from thumbnails to imports" in log
    assert "autoscale: return one worker from imports to thumbnails" in log


def test_a_backlog_without_consumers_is_critical(broker, worker):
    # Cron would restart the stopped group meanwhile.
    hold_off_cron(worker, 30)
    worker.check_output("supervisorctl stop thumbnails-00")
    try:
        publish(worker, "thumbnails", 5, 0.1, first_id=90001)
        alert = "queue thumbnails: 5 jobs waiting and no consumer"
        # The management API's figures lag by up to 5 s.
        assert wait_until(
            lambda: any(p.startswith(alert) for p in check(broker, "broker")[1]["problems"]), 20
        )
        assert check(broker, "broker")[0] == 2
    finally:
        worker.check_output("supervisorctl start thumbnails-00")
    assert wait_until(lambda: check(broker, "broker")[0] == 0, 30)


def test_the_status_report_shows_queues_with_rates_and_workers(worker):
    # 100 s of work for the 3 workers; the rates are measured from the cron run's last sample
    # (or over 10 s when it is too recent).
    publish(worker, "imports", 300, 1, first_id=91001)
    time.sleep(10)
    report = ansible_playbook("playbooks/status.yml")
    print(report)
    imports = next(line.split() for line in report.splitlines() if line.split()[:1] == ["imports"])
    ready, unacked, consumers, _, out_rate = imports[1:6]
    assert int(ready) + int(unacked) > 0 and int(consumers) == EXPECTED["imports"]
    assert float(out_rate) > 0
    assert "imports: 3 running of 3 expected" in report
    assert "load per CPU" in report
