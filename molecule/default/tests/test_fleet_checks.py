"""Drills for brokerfleet-check, run by cron every minute on the worker host: dead workers, a
stopped group and a stopped supervisord come back within a cron period; under load the least
important group shrinks, and grows back when the load falls."""

from conftest import of_group, running, wait_until

CRON_PERIOD = 60
EXPECTED = {"imports": 3, "thumbnails": 1, "reports": 2}  # molecule.yml
DRILL_LOAD = "/var/lib/brokerfleet/drill-load"  # fleet_checks_load_source in molecule.yml


def complete(worker):
    processes = running(worker)
    return all(len(of_group(processes, g)) == n for g, n in EXPECTED.items()) and processes


def check_log(worker):
    return worker.run("cat /var/log/brokerfleet/check.log").stdout


def test_the_check_runs_from_cron_and_reports_ok(worker):
    assert "brokerfleet-check workers" in worker.check_output("cat /etc/cron.d/brokerfleet-check")
    result = worker.run("brokerfleet-check workers --json")
    assert result.rc == 0, result.stdout
    assert '"status": "OK"' in result.stdout


def test_killed_workers_and_a_stopped_group_are_back_within_a_cron_period(worker):
    before = running(worker)
    killed = list(of_group(before, "imports").values())[:2]
    worker.check_output(f"kill -9 {' '.join(map(str, killed))}")
    worker.check_output("supervisorctl stop thumbnails-00")  # the whole group
    assert wait_until(lambda: complete(worker), CRON_PERIOD + 15)
    assert not set(killed) & set(running(worker).values())
    assert "started thumbnails-00 (was STOPPED)" in check_log(worker)


def test_a_stopped_supervisord_is_started_within_a_cron_period(worker):
    worker.check_output("service supervisor stop")
    assert not complete(worker)
    assert wait_until(lambda: complete(worker), CRON_PERIOD + 45)
    assert "supervisord was down: started it" in check_log(worker)


def test_load_guard_sheds_the_least_important_group_then_gives_it_back(worker):
    important = {**of_group(running(worker), "imports"), **of_group(running(worker), "reports")}
    worker.check_output(f"echo 0.95 > {DRILL_LOAD}")
    try:
        assert wait_until(lambda: not of_group(running(worker), "thumbnails"), CRON_PERIOD + 15)
        worker.check_output(f"echo 0.2 > {DRILL_LOAD}")
        assert wait_until(lambda: of_group(running(worker), "thumbnails"), CRON_PERIOD + 15)
    finally:
        worker.run(f"rm -f {DRILL_LOAD}")
    # The more important groups were never touched: same processes, same PIDs.
    now = running(worker)
    assert {name: now.get(name) for name in important} == important
    log = check_log(worker)
    assert "load guard: shed one worker of thumbnails" in log
    assert "load guard: restore one worker of thumbnails" in log
