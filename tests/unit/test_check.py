"""Unit and property tests of roles/fleet_checks/files/brokerfleet_check.py: the load guard,
autoscale, the broker and status reports, and how it writes its files."""

import json
import os
import re
import socket
import stat
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

import brokerfleet_check as check
from brokerfleet import sizing

GROUPS = [
    {"name": "imports", "processes": 3, "min": 1, "importance": 4},
    {"name": "thumbnails", "processes": 2, "min": 1, "importance": 1},
    {"name": "billing", "processes": 2, "min": 0, "importance": 5},
]


def programs(group, count):
    """A group's supervisord program names, as the plan names them."""
    return [sizing.program_name(group, index) for index in range(count)]


def run(state, loads, groups=GROUPS, high=0.8, low=0.5, runs=2):
    actions = []
    for load in loads:
        state, action = check.guard_step(state, load, groups, high, low, runs)
        actions.append(action)
    return state, actions


def test_sheds_the_least_important_group_after_k_runs_above_the_threshold():
    state, actions = run({}, [0.9, 0.95])
    assert actions == [None, ("shed", "thumbnails")]
    assert state["shed"] == {"thumbnails": 1}


def test_never_below_min_and_never_importance_five():
    state, actions = run({}, [0.9] * 20)
    shed = [a for a in actions if a]
    # thumbnails 2 -> 1 (its min), then imports 3 -> 1; billing (importance 5) untouched.
    assert shed == [("shed", "thumbnails"), ("shed", "imports"), ("shed", "imports")]
    assert state["shed"] == {"thumbnails": 1, "imports": 2}


def test_gives_back_most_important_first_after_k_runs_below():
    state, _ = run({}, [0.9] * 6)
    state, actions = run(state, [0.3] * 6)
    assert [a for a in actions if a] == [
        ("restore", "imports"),
        ("restore", "imports"),
        ("restore", "thumbnails"),
    ]
    assert state["shed"] == {}


def test_holds_still_between_the_thresholds_and_when_load_is_unknown():
    state, actions = run({}, [0.9, 0.7, 0.9, None, 0.9, 0.6])
    assert actions == [None] * 6 and state["shed"] == {}


def test_shed_counts_follow_a_smaller_manifest():
    groups = [{**GROUPS[1], "processes": 1}]  # thumbnails re-rendered at its min
    state, _ = run({"shed": {"thumbnails": 1, "gone": 2}}, [0.6], groups=groups)
    assert state["shed"] == {}


def test_expected_processes_leave_out_the_highest_numbers():
    groups = [
        {**GROUPS[0], "programs": programs("imports", 4)},
        {**GROUPS[1], "programs": programs("thumbnails", 2)},
    ]
    expected = check.expected_processes(groups, {"imports": 1})
    assert expected == {
        "imports-00": True,
        "imports-01": True,
        "imports-02": False,
        "imports-03": False,  # autoscale's spare slot
        "thumbnails-00": True,
        "thumbnails-01": True,
    }


loads = st.lists(st.one_of(st.none(), st.floats(0, 3)), max_size=60)


@given(loads=loads, runs=st.integers(1, 4))
def test_bounds_hold_and_it_never_flaps(loads, runs):
    state, actions = run({}, loads, runs=runs)
    by_name = {g["name"]: g for g in GROUPS}
    for name, count in state.get("shed", {}).items():
        group = by_name[name]
        assert group["importance"] < 5 and 0 < count <= group["processes"] - group["min"]
    # Two actions are always at least `runs` runs apart.
    acted = [i for i, action in enumerate(actions) if action]
    assert all(b - a >= runs for a, b in zip(acted, acted[1:], strict=False))


# --- broker and status --------------------------------------------------------------------

# As broker.json lists them (queues.checked_queues): reports' dead-letter queues are bounded.
QUEUES = [
    {
        "name": "imports",
        "group": "imports",
        "level": None,
        "dead": "imports.dead",
        "dead_max_length": None,
    },
    {
        "name": "reports.high",
        "group": "reports",
        "level": "high",
        "dead": "reports.high.dead",
        "dead_max_length": 100,
    },
]
# How each message about imports.dead ends.
REQUEUE_IMPORTS = "; requeue them with `brokerfleet-worker move --group imports --from dead`"


def queue(ready=0, unacked=0, consumers=1, published=0, acked=0):
    return dict(ready=ready, unacked=unacked, consumers=consumers, published=published, acked=acked)


def sample(time=0.0, alarms=(), **queues):
    return {"time": time, "alarms": list(alarms), "usage": {}, "queues": queues}


def test_a_backlog_without_consumer_is_critical_and_failed_jobs_a_warning():
    found = check.broker_problems(
        sample(
            imports=queue(ready=12, consumers=0),
            **{"reports.high": queue(), "imports.dead": queue(ready=2, consumers=0)},
        ),
        QUEUES,
    )
    assert found == [
        (
            check.CRITICAL,
            "queue imports: 12 jobs waiting and no consumer"
            " (workers of group imports down or shed)",
        ),
        (check.WARNING, "queue imports.dead: 2 failed jobs to look at" + REQUEUE_IMPORTS),
    ]


def test_idle_queues_without_consumers_and_missing_queues():
    found = check.broker_problems(sample(imports=queue(consumers=0)), QUEUES)
    assert found == [(check.WARNING, "queue reports.high does not exist: re-run the play")]


def test_broker_alarms_come_first():
    alarm = (check.CRITICAL, "disk space alarm on rabbit@mq1: publishers are blocked")
    assert check.broker_problems(sample(alarms=[alarm]), []) == [alarm]


def test_rates_come_from_the_counters_of_two_samples():
    before = sample(10.0, imports=queue(published=100, acked=40), gone=queue())
    after = sample(
        30.0,
        imports=queue(published=140, acked=100),
        fresh=queue(published=5),
        gone=queue(published=0, acked=0),
    )
    rates = check.queue_rates(before, after)
    assert rates["imports"] == (2.0, 3.0)
    assert rates["fresh"] is None  # no counters before
    assert check.queue_rates(after, before)["imports"] is None  # time went back


def test_counters_that_went_back_give_no_rate():
    before = sample(10.0, imports=queue(published=100, acked=40))
    after = sample(20.0, imports=queue(published=3, acked=1))  # the queue was re-created
    assert check.queue_rates(before, after) == {"imports": None}


def test_drain_time_uses_the_net_rate():
    assert check.drain_seconds(0, None) == 0
    assert check.drain_seconds(600, (1.0, 3.0)) == 300
    assert check.drain_seconds(600, (3.0, 3.0)) is None  # as much comes in as goes out
    assert check.drain_seconds(600, None) is None


def test_durations_read_at_a_glance():
    assert [check.duration(s) for s in (None, 0, 0.2, 45, 720, 3 * 3600 + 300, 50 * 3600)] == [
        "not draining",
        "empty",
        "1s",
        "45s",
        "12m",
        "3h 05m",
        "2d 2h",
    ]


def test_a_growing_backlog_is_the_same_problem_but_a_new_queue_is_news():
    one = check.problem_signature(["queue imports: 12 jobs waiting and no consumer"])
    same = check.problem_signature(["queue imports: 13 jobs waiting and no consumer"])
    other = check.problem_signature(["queue thumbnails: 1 jobs waiting and no consumer"])
    assert one == same != other
    assert check.problem_signature([]) == []


def test_the_status_text_shows_each_queue_with_its_rates_and_drain_time():
    report = check.Report("status")
    config = {"kind": "rabbitmq", "queues": QUEUES[:1]}
    before = sample(0.0, imports=queue(ready=1200, published=0, acked=0))
    now = sample(60.0, imports=queue(ready=1000, unacked=4, published=60, acked=240))
    check.describe_broker(report, config, now, before)
    lines = report.text().splitlines()
    assert lines[0] == "brokerfleet status OK"
    assert lines[3].split() == ["imports", "1000", "4", "1", "1.0", "4.0", "6m"]  # 1004 / 3 s
    assert report.data["broker"]["queues"]["imports"]["drain_seconds"] == 1004 / 3


def test_the_metrics_give_each_queue_s_rates_once_known():
    config = {"kind": "rabbitmq", "queues": QUEUES[:1]}
    before = sample(0.0, imports=queue(published=0, acked=0))
    now = sample(60.0, imports=queue(ready=1000, unacked=4, published=60, acked=240))
    report = check.Report("broker")
    check.describe_broker(report, config, now, before)
    metrics = report.prometheus().splitlines()
    assert 'brokerfleet_queue_in_per_second{queue="imports"} 1.0' in metrics
    assert 'brokerfleet_queue_out_per_second{queue="imports"} 4.0' in metrics
    # The first sample has no rates: no line rather than a made-up 0.
    report = check.Report("broker")
    check.describe_broker(report, config, now, None)
    assert not [m for m in report.prometheus().splitlines() if "_per_second" in m]


def test_queue_depth_metrics_only_where_no_exporter_has_them():
    now = sample(60.0, imports=queue(ready=1000, unacked=4))
    depth = {}
    for kind in ("rabbitmq", "activemq"):
        report = check.Report("broker")
        check.describe_broker(report, {"kind": kind, "queues": QUEUES[:1]}, now, None)
        depth[kind] = [m for m in report.prometheus().splitlines() if "queue_ready" in m]
    # rabbitmq_prometheus has RabbitMQ's (/metrics/detailed); ActiveMQ has no exporter.
    assert depth == {"rabbitmq": [], "activemq": ['brokerfleet_queue_ready{queue="imports"} 1000']}


# --- failed jobs: dead-letter queues -----------------------------------------------------------


def dead_problems(last=None, **dead):
    """What broker_problems says of the dead-letter queues ``dead`` ({name: queue()}), the
    worker queues being fine, given the previous run's sample ``last``."""
    now = sample(imports=queue(), **{"reports.high": queue()}, **dead)
    return check.broker_problems(now, QUEUES, None, last)


def test_failed_jobs_that_stay_are_a_warning_naming_the_limit_and_how_to_requeue():
    last = sample(**{"imports.dead": queue(ready=2), "reports.high.dead": queue(ready=5)})
    found = dead_problems(
        last, **{"imports.dead": queue(ready=2), "reports.high.dead": queue(ready=4, unacked=1)}
    )
    assert found == [
        (check.WARNING, "queue imports.dead: 2 failed jobs to look at" + REQUEUE_IMPORTS),
        (
            check.WARNING,
            "queue reports.high.dead: 5 failed jobs to look at (limit 100); requeue them with"
            " `brokerfleet-worker move --group reports --from dead --to high`",
        ),
    ]
    # Fewer than at the previous run (being moved back, or purged): still only a warning.
    assert dead_problems(last, **{"imports.dead": queue(ready=1)})[0][0] == check.WARNING
    # Without a previous run to compare with, the same.
    assert dead_problems(None, **{"imports.dead": queue(ready=2)})[0][0] == check.WARNING
    # Empty dead-letter queues, listed or not, say nothing.
    assert dead_problems(last, **{"imports.dead": queue()}) == []


def test_more_failed_jobs_than_at_the_previous_run_are_critical():
    last = sample(**{"imports.dead": queue(ready=2)})
    found = dead_problems(last, **{"imports.dead": queue(ready=4, unacked=1)})
    assert found == [
        (
            check.CRITICAL,
            "queue imports.dead: 5 failed jobs, 3 more than at the previous run" + REQUEUE_IMPORTS,
        )
    ]
    # A dead-letter queue the previous sample did not list held nothing then (ActiveMQ makes
    # one at its first dead letter).
    [(code, message)] = dead_problems(sample(), **{"imports.dead": queue(ready=1)})
    assert code == check.CRITICAL and "1 failed jobs, 1 more than at the previous run" in message
    # Growing, below its limit: the limit is named.
    last = sample(**{"reports.high.dead": queue(ready=10)})
    [(code, message)] = dead_problems(last, **{"reports.high.dead": queue(ready=11)})
    assert code == check.CRITICAL
    assert message.startswith(
        "queue reports.high.dead: 11 failed jobs, 1 more than at the previous run, limit 100; "
    )


def test_a_dead_letter_queue_near_its_limit_is_critical():
    # 90 ready of 100: publishes to it are about to be refused.
    last = sample(**{"reports.high.dead": queue(ready=90)})
    [(code, message)] = dead_problems(last, **{"reports.high.dead": queue(ready=90)})
    assert (code, message) == (
        check.CRITICAL,
        "queue reports.high.dead: 90 failed jobs, at or near its limit of 100: once full it"
        " refuses failed jobs; requeue them with"
        " `brokerfleet-worker move --group reports --from dead --to high`",
    )
    # Only ready jobs count against a max-length: 89 ready and 5 unacked is not near it.
    steady = sample(**{"reports.high.dead": queue(ready=94)})
    [(code, message)] = dead_problems(steady, **{"reports.high.dead": queue(ready=89, unacked=5)})
    assert code == check.WARNING and "94 failed jobs to look at (limit 100)" in message
    # Full and growing: both said.
    [(code, message)] = dead_problems(last, **{"reports.high.dead": queue(ready=100)})
    assert code == check.CRITICAL
    assert "100 failed jobs, 10 more than at the previous run, at or near its limit" in message
    # No limit (classic .dead queues, ActiveMQ), however many: never full.
    [(code, _)] = dead_problems(
        sample(**{"imports.dead": queue(ready=10**7)}), **{"imports.dead": queue(ready=10**7)}
    )
    assert code == check.WARNING


def test_queues_of_an_older_broker_json_have_no_known_limit_nor_level():
    old = [{"name": "reports.high", "group": "reports", "dead": "reports.high.dead"}]
    now = sample(**{"reports.high": queue(), "reports.high.dead": queue(ready=99)})
    assert check.broker_problems(now, old, None, now) == [
        (
            check.WARNING,
            "queue reports.high.dead: 99 failed jobs to look at; requeue them with"
            " `brokerfleet-worker move --group reports --from dead`",
        )
    ]


def test_growing_and_steady_failed_jobs_are_news_their_figures_are_not():
    def signature(last, jobs):
        return check.problem_signature(
            [m for _, m in dead_problems(last, **{"imports.dead": queue(ready=jobs)})]
        )

    steady = signature(sample(**{"imports.dead": queue(ready=3)}), 3)
    assert steady == signature(sample(**{"imports.dead": queue(ready=30)}), 30)
    growing = signature(sample(**{"imports.dead": queue(ready=3)}), 4)
    assert growing == signature(sample(**{"imports.dead": queue(ready=30)}), 50)
    assert growing != steady


def test_the_json_and_metrics_show_every_dead_letter_queue():
    report = check.Report("broker")
    config = {"kind": "rabbitmq", "queues": QUEUES}
    last = sample(0.0, **{"reports.high.dead": queue(ready=80)})
    now = sample(
        60.0, imports=queue(), **{"reports.high": queue(), "reports.high.dead": queue(ready=95)}
    )
    check.describe_broker(report, config, now, None, last=last)
    assert report.code == check.CRITICAL
    data = json.loads(json.dumps(report.data))
    assert data["broker"]["dead_letters"] == {
        "imports.dead": {
            "queue": "imports",
            "group": "imports",
            "jobs": 0,
            "max_length": None,
            "full": False,
            "previous": 0,
            "growing": False,
        },
        "reports.high.dead": {
            "queue": "reports.high",
            "group": "reports",
            "jobs": 95,
            "max_length": 100,
            "full": True,
            "previous": 80,
            "growing": True,
        },
    }
    metrics = report.prometheus().splitlines()
    for line in (
        'brokerfleet_dead_letter_jobs{queue="imports.dead"} 0',
        'brokerfleet_dead_letter_full{queue="imports.dead"} 0',
        'brokerfleet_dead_letter_jobs{queue="reports.high.dead"} 95',
        'brokerfleet_dead_letter_full{queue="reports.high.dead"} 1',
        'brokerfleet_dead_letter_max_length{queue="reports.high.dead"} 100',
    ):
        assert line in metrics
    # No limit, no max_length sample.
    assert not [
        m for m in metrics if m.startswith('brokerfleet_dead_letter_max_length{queue="imports')
    ]


# --- long waits and full queues ---------------------------------------------------------------

# As broker.json lists a queue whose group sets max_drain_seconds (10 minutes); one on a broker
# whose work queues are bounded at 1000 jobs; one with both.
WAITING = [{**QUEUES[0], "max_drain_seconds": 600}]
BOUNDED = [{**QUEUES[0], "max_length": 1000}]
LIMITED = [{**QUEUES[0], "max_length": 1000, "max_drain_seconds": 600}]
# What the messages of the long-wait alert end with.
LOOK = "`brokerfleet-check status` on the worker hosts of group imports"
MORE_WORKERS = (
    ": add workers to group imports (its weight or max, or fleet_cpus), or see whether the "
    f"load guard shed them ({LOOK})"
)


def waits(now, done, queues=WAITING, paused=None, **seen):
    """What broker_problems says of the imports queue seen as ``seen`` (queue()'s keys) ``now``
    seconds after a sample at 0, ``done`` jobs acknowledged in between."""
    before = sample(0.0, imports=queue())
    after = sample(now, imports=queue(acked=done, **seen))
    figures = check.queue_figures(after, queues, before)
    return check.broker_problems(after, queues, paused, before, figures)


def test_the_wait_is_the_backlog_at_the_out_rate_at_best_one_job_an_interval():
    assert check.wait_seconds(0, None, None) == 0
    assert check.wait_seconds(600, (1.0, 3.0), 60) == 200  # what comes in waits behind
    assert check.wait_seconds(600, None, 60) is None
    # Nothing done in a minute: one job, at best, right after it.
    assert check.wait_seconds(6, (0.0, 0.0), 60) == 360


def test_a_backlog_that_outlasts_max_drain_seconds_is_a_warning_twice_as_long_critical():
    # 1004 jobs at 1 a second: 16 m 44 s, over the 10 minutes.
    assert waits(60.0, 60, ready=1000, unacked=4) == [
        (
            check.WARNING,
            "queue imports: 1004 jobs would take 17m to work off at the rate its workers take "
            "them, over max_drain_seconds 10m" + MORE_WORKERS,
        )
    ]
    # At half a job a second, 33 minutes: over twice the limit.
    [(code, message)] = waits(120.0, 60, ready=1000, unacked=4)
    assert code == check.CRITICAL
    assert "1004 jobs would take 33m to work off" in message
    assert "over twice max_drain_seconds 10m: add workers to group imports" in message
    # Within the limit; exactly at it; and no limit at all (QUEUES: max_drain_seconds unset).
    assert waits(60.0, 600, ready=1000, unacked=4) == []
    assert waits(60.0, 100, ready=1000) == []
    assert waits(60.0, 1, ready=10**6, queues=QUEUES[:1]) == []


def test_a_wait_is_judged_only_with_rates_and_only_while_jobs_wait():
    now = sample(60.0, imports=queue(ready=10**6, acked=1))
    assert check.broker_problems(now, WAITING, None, now) == []
    # Jobs in progress, none waiting: long jobs are max_job_seconds' business.
    assert waits(60.0, 0, ready=0, unacked=50) == []


def test_jobs_waiting_that_nothing_drains_are_critical():
    assert waits(60.0, 0, ready=5) == [
        (
            check.CRITICAL,
            "queue imports: 5 jobs waiting, none done since the previous run and none in "
            f"progress: nothing drains it (max_drain_seconds 10m); check its workers with {LOOK}",
        )
    ]


def test_long_jobs_in_progress_are_a_lower_bound_not_a_stuck_queue():
    # No job done in the minute, two in progress: at best one a minute.
    assert waits(60.0, 0, ready=3, unacked=2) == []  # 5 minutes at least: within 10
    [(code, message)] = waits(60.0, 0, ready=20, unacked=2)
    assert code == check.CRITICAL
    assert message.startswith("queue imports: 22 jobs would take at least 22m to work off")


def test_no_consumer_and_a_paused_group_are_said_once_not_again_as_a_long_wait():
    [(code, message)] = waits(60.0, 0, ready=500, consumers=0)
    assert code == check.CRITICAL and message.endswith(
        "and no consumer (workers of group imports down or shed)"
    )
    [(code, message)] = waits(60.0, 0, ready=500, consumers=0, paused={"imports": PAUSE})
    assert code == check.OK and "as expected: group imports paused since" in message


def test_a_queue_near_its_max_length_is_a_warning_then_critical():
    def full(**seen):
        return check.broker_problems(sample(imports=queue(**seen)), BOUNDED)

    assert full(ready=799, unacked=900) == []  # only ready jobs count against a max-length
    assert full(ready=800) == [
        (
            check.WARNING,
            "queue imports: 800 jobs ready, 80% of its max-length 1000, filling up: once full, "
            "the broker refuses new jobs (overflow reject-publish); add workers to group "
            "imports (its weight or max, or fleet_cpus) or slow down the producers",
        )
    ]
    [(code, message)] = full(ready=1000)
    assert code == check.CRITICAL
    assert message.startswith(
        "queue imports: 1000 jobs ready, 100% of its max-length 1000, nearly full"
    )
    # Paused, or without consumers, a queue about to refuse jobs is still CRITICAL.
    found = check.broker_problems(
        sample(imports=queue(ready=950, consumers=0)), LIMITED, {"imports": PAUSE}
    )
    assert [code for code, _ in found] == [check.OK, check.CRITICAL]
    # No limit (ActiveMQ, rabbitmq_queue_max_length 0, an older broker.json): never full.
    assert check.broker_problems(sample(imports=queue(ready=10**7)), QUEUES[:1]) == []


def test_a_step_up_is_news_a_growing_figure_is_not():
    def signature(now, done, **seen):
        return check.problem_signature([m for _, m in waits(now, done, **seen)])

    warning = signature(60.0, 60, ready=1000, unacked=4)
    assert warning == signature(60.0, 60, ready=1020, unacked=4)
    assert warning != signature(120.0, 60, ready=1000, unacked=4)

    def full(ready):
        return check.problem_signature(
            [m for _, m in check.broker_problems(sample(imports=queue(ready=ready)), BOUNDED)]
        )

    assert full(800) == full(850) != full(900)


def test_the_json_and_metrics_show_each_queue_s_limits_and_alerts():
    report = check.Report("broker")
    config = {"kind": "rabbitmq", "queues": LIMITED + QUEUES[1:]}
    before = sample(0.0, imports=queue(), **{"reports.high": queue()})
    now = sample(60.0, imports=queue(ready=950, unacked=10, acked=60), **{"reports.high": queue()})
    check.describe_broker(report, config, now, before)
    assert report.code == check.CRITICAL
    data = json.loads(json.dumps(report.data))["broker"]["queues"]
    imports = {key: data["imports"][key] for key in ALERT_KEYS}
    assert imports == {
        "wait_seconds": 960.0,
        "max_drain_seconds": 600,
        "long_wait": "WARNING",
        "max_length": 1000,
        "near_max_length": "CRITICAL",
    }
    assert {key: data["reports.high"][key] for key in ALERT_KEYS} == {
        "wait_seconds": 0,
        "max_drain_seconds": None,
        "long_wait": None,
        "max_length": None,
        "near_max_length": None,
    }
    metrics = report.prometheus().splitlines()
    for line in (
        'brokerfleet_queue_wait_seconds{queue="imports"} 960.0',
        'brokerfleet_queue_max_drain_seconds{queue="imports"} 600',
        'brokerfleet_queue_max_length{queue="imports"} 1000',
        'brokerfleet_queue_long_wait_status{queue="imports"} 1',
        'brokerfleet_queue_near_max_length_status{queue="imports"} 2',
        'brokerfleet_queue_wait_seconds{queue="reports.high"} 0',
    ):
        assert line in metrics
    # No limit, no limit sample and no alert state.
    assert not [m for m in metrics if "max" in m and 'queue="reports.high"' in m]
    assert not [m for m in metrics if "_status{" in m and 'queue="reports.high"' in m]


ALERT_KEYS = ("wait_seconds", "max_drain_seconds", "long_wait", "max_length", "near_max_length")


def test_the_broker_check_compares_with_the_previous_run_however_old(state_dir, monkeypatch):
    directory, _ = state_dir
    monkeypatch.setattr(check, "BROKER_SAMPLE", str(directory / "broker-sample.json"))
    monkeypatch.setattr(check, "PAUSE_STATE", str(directory / "paused.json"))
    monkeypatch.setattr(check, "QUIESCE_STATE", str(directory / "quiesced.json"))
    config = {"kind": "rabbitmq", "queues": QUEUES[:1]}

    def run(at, failed):
        now = sample(at, imports=queue(published=at), **{"imports.dead": queue(ready=failed)})
        monkeypatch.setattr(check, "read_broker", lambda report: (config, now))
        report = check.Report("broker")
        check.check_broker(None, report)
        return report

    assert run(0.0, 2).code == check.WARNING  # the first run: nothing to compare with
    # Cron every 30 minutes: too old a sample for rates, not for counting failed jobs.
    later = run(1800.0, 3)
    assert later.code == check.CRITICAL
    assert later.data["broker"]["dead_letters"]["imports.dead"]["previous"] == 2
    assert later.data["broker"]["queues"]["imports"]["in_per_second"] is None
    assert run(1860.0, 3).code == check.WARNING
    assert json.loads((directory / "broker-sample.json").read_text())["time"] == 1860.0


# --- a RabbitMQ cluster: nodes and quorum queues ----------------------------------------------

NODES = ["rabbit@mq1", "rabbit@mq2", "rabbit@mq3"]


def node(name, running=True, alarms=(), partitions=(), drained=False):
    return {
        "name": name,
        "running": running,
        "alarms": list(alarms),
        "partitions": list(partitions),
        "drained": drained,
    }


def cluster(*changed):
    """Three nodes, all running, but for the ``changed`` ones (by name)."""
    by_name = {n["name"]: n for n in changed}
    return [by_name.get(name, node(name)) for name in NODES]


def quorum(online=NODES, leader="rabbit@mq1", **counts):
    return {
        **queue(**counts),
        "type": "quorum",
        "members": list(NODES),
        "online": list(online),
        "leader": leader,
    }


def clustered(nodes, alarms=(), **queues):
    return {**sample(alarms=alarms, **queues), "nodes": nodes}


def test_a_healthy_cluster_and_a_single_node_have_no_problems():
    assert check.node_problems(cluster()) == []
    assert check.node_problems([node("rabbit@mq1")]) == []
    assert check.node_problems(None) == []  # not visible to the check's user
    found = check.broker_problems(clustered(cluster(), imports=quorum()), QUEUES[:1])
    assert found == []


def test_one_node_down_is_a_warning_while_a_majority_runs():
    assert check.node_problems(cluster(node("rabbit@mq3", running=False))) == [
        (check.WARNING, "rabbit@mq3 not running: 2 of 3 nodes running")
    ]


def test_a_majority_down_is_critical():
    down = cluster(node("rabbit@mq2", running=False), node("rabbit@mq3", running=False))
    [(code, message)] = check.node_problems(down)
    assert code == check.CRITICAL
    assert message.startswith("rabbit@mq2, rabbit@mq3 not running: 1 of 3 nodes running")
    assert "below a majority" in message
    # Two nodes of two is no majority to lose: one down is already half.
    [(code, _)] = check.node_problems([node("rabbit@mq1"), node("rabbit@mq2", running=False)])
    assert code == check.CRITICAL


def test_a_partition_is_critical():
    split = cluster(node("rabbit@mq1", partitions=["rabbit@mq3"]))
    assert check.node_problems(split) == [
        (check.CRITICAL, "network partition: rabbit@mq1 cannot see rabbit@mq3")
    ]


def test_a_node_alarm_names_the_node_and_the_resource_once():
    nodes = cluster(node("rabbit@mq2", alarms=["memory", "disk space"]))
    said = (check.CRITICAL, "memory alarm on rabbit@mq2: publishers are blocked")
    # The health check (cluster-wide) named the memory alarm; /api/nodes adds the disk one.
    assert check.broker_problems(clustered(nodes, alarms=[said]), []) == [
        said,
        (check.CRITICAL, "disk space alarm on rabbit@mq2: publishers are blocked"),
    ]


def test_a_drained_node_is_a_warning():
    [(code, message)] = check.node_problems(cluster(node("rabbit@mq2", drained=True)))
    assert code == check.WARNING and message.startswith("rabbit@mq2 is drained")


def test_quorum_queue_replicas_all_online_one_missing_and_below_quorum():
    assert check.replica_problems("imports", quorum()) == []
    assert check.replica_problems("imports", quorum(online=NODES[:2])) == [
        (check.WARNING, "queue imports: 2 of 3 replicas online")
    ]
    assert check.replica_problems("imports", quorum(online=NODES[:1], leader=None)) == [
        (
            check.CRITICAL,
            "queue imports has 1 of 3 replicas online: below quorum, it cannot take or "
            "deliver messages",
        )
    ]
    # Classic queues, and quorum queues whose leader reported nothing, are left alone.
    assert check.replica_problems("imports", queue()) == []
    assert check.replica_problems("imports", {**quorum(), "online": None}) == []


def test_the_broker_check_looks_at_the_replicas_of_worker_and_dead_letter_queues():
    found = check.broker_problems(
        clustered(
            cluster(node("rabbit@mq3", running=False)),
            imports=quorum(online=NODES[:2]),
            **{"imports.dead": quorum(online=NODES[:1])},
        ),
        QUEUES[:1],
    )
    assert [code for code, _ in found] == [check.WARNING, check.WARNING, check.CRITICAL]
    assert found[1][1] == "queue imports: 2 of 3 replicas online"
    assert found[2][1].startswith("queue imports.dead has 1 of 3 replicas online")


def test_the_status_text_and_json_show_the_cluster():
    report = check.Report("status")
    config = {"kind": "rabbitmq", "queues": QUEUES[:1]}
    nodes = cluster(node("rabbit@mq2", alarms=["memory"]), node("rabbit@mq3", running=False))
    now = clustered(nodes, imports=quorum(online=NODES[:2], leader="rabbit@mq2"))
    check.describe_broker(report, config, now, None)
    lines = report.text().splitlines()
    assert lines[0] == "brokerfleet status CRITICAL"
    start = lines.index("  cluster: 2 of 3 nodes running")
    assert [line.split(None, 1) for line in lines[start + 1 : start + 4]] == [
        ["rabbit@mq1", "running"],
        ["rabbit@mq2", "running, memory alarm"],
        ["rabbit@mq3", "NOT RUNNING"],
    ]
    assert lines[start + 5].split() == ["imports", "rabbit@mq2", "2/3"]
    data = json.loads(json.dumps(report.data))
    assert data["broker"]["nodes"] == nodes
    assert data["broker"]["queues"]["imports"]["members"] == NODES
    assert data["broker"]["queues"]["imports"]["online"] == NODES[:2]
    assert data["broker"]["queues"]["imports"]["leader"] == "rabbit@mq2"
    prometheus = report.prometheus().splitlines()
    assert "brokerfleet_broker_nodes 3" in prometheus
    assert "brokerfleet_broker_nodes_running 2" in prometheus


def test_a_single_node_status_has_no_cluster_section():
    config = {"kind": "rabbitmq", "queues": QUEUES[:1]}
    single = {**quorum(), "members": NODES[:1], "online": NODES[:1]}
    for nodes in ([node("rabbit@mq1")], None):
        report = check.Report("status")
        check.describe_broker(report, config, clustered(nodes, imports=single), None)
        assert len(report.text().splitlines()) == 4  # status, kind, header, imports
        assert "cluster" not in report.text()


def test_a_cluster_whose_nodes_are_not_visible_says_so():
    report = check.Report("status")
    config = {"kind": "rabbitmq", "queues": QUEUES[:1]}
    check.describe_broker(report, config, clustered(None, imports=quorum()), None)
    lines = report.text().splitlines()
    assert "  cluster nodes unknown: /api/nodes wants a user tagged monitoring" in lines
    assert lines[-1].split() == ["imports", "rabbit@mq1", "3/3"]


def test_status_can_leave_the_broker_out():
    assert check.arguments(["status", "--no-broker"]).no_broker
    assert not check.arguments(["status"]).no_broker


# --- autoscale ------------------------------------------------------------------------------

FLEET = [  # a budget of 8, every group rendered with 8 slots
    {
        "name": "imports",
        "programs": programs("imports", 8),
        "processes": 4,
        "min": 1,
        "max": 6,
        "importance": 4,
        "job_seconds": 20,
    },
    {
        "name": "thumbnails",
        "programs": programs("thumbnails", 8),
        "processes": 2,
        "min": 0,
        "max": None,
        "importance": 1,
        "job_seconds": 1,
    },
    {
        "name": "reports",
        "programs": programs("reports", 8),
        "processes": 2,
        "min": 1,
        "max": None,
        "importance": 3,
        "job_seconds": 5,
    },
]


def scale(moved, backlog, times=1, horizon=300):
    actions = []
    for _ in range(times):
        moved, action = check.autoscale_step(moved, FLEET, backlog, horizon)
        actions.append(action)
    return moved, actions


def test_autoscale_moves_workers_from_idle_groups_to_a_long_backlog():
    # 600 imports x 20 s / 4 workers = 50 minutes > 5: take from the idle groups, least
    # important first, never below a min, never above imports' max of 6.
    moved, actions = scale({}, {"imports": 600}, times=4)
    assert actions == [
        ("move", "thumbnails", "imports"),
        ("move", "thumbnails", "imports"),
        None,
        None,
    ]
    assert moved == {"imports": 2, "thumbnails": -2, "reports": 0}


def test_autoscale_takes_nothing_from_a_busy_group_and_holds_when_unsure():
    assert scale({}, {"imports": 600, "thumbnails": 5, "reports": 3})[1] == [None]
    assert scale({"imports": 1, "thumbnails": -1}, None) == (
        {"imports": 1, "thumbnails": -1, "reports": 0},
        [None],
    )


def test_autoscale_gives_workers_back_once_the_backlog_is_short():
    moved, actions = scale({"imports": 2, "thumbnails": -1, "reports": -1}, {}, times=3)
    assert actions == [
        ("return", "imports", "reports"),  # to the more important lender first
        ("return", "imports", "thumbnails"),
        None,
    ]
    assert moved == {"imports": 0, "thumbnails": 0, "reports": 0}


def test_a_short_backlog_moves_nothing():
    # 40 x 20 s / 4 = 200 s, within the 300 s horizon.
    assert scale({}, {"imports": 40})[1] == [None]


def test_group_backlog_sums_each_groups_queues_from_a_fresh_sample():
    groups = [{"name": "reports", "queues": ["reports.high", "reports.low"]}]
    sample = {
        "time": 1000.0,
        "queues": {
            "reports.high": {"ready": 3, "unacked": 1},
            "reports.low": {"ready": 10, "unacked": 0},
        },
    }
    assert check.group_backlog(groups, sample, now=1060.0) == {"reports": 14}
    assert check.group_backlog(groups, sample, now=2000.0) is None  # stale
    assert check.group_backlog(groups, None, now=1000.0) is None


backlogs = st.fixed_dictionaries({g["name"]: st.integers(0, 2000) for g in FLEET})


@given(backlog=backlogs, runs=st.integers(1, 30))
def test_autoscale_keeps_the_budget_and_bounds_and_settles(backlog, runs):
    moved, actions = scale({}, backlog, times=runs)
    assert sum(moved.values()) == 0  # workers move, the budget stays
    for group in FLEET:
        workers = group["processes"] + moved[group["name"]]
        ceiling = len(group["programs"]) if group["max"] is None else group["max"]
        assert group["min"] <= workers <= max(ceiling, group["processes"])
    # Under a constant backlog it settles: once it holds still, it stays still.
    settled = actions.index(None) if None in actions else len(actions)
    assert all(action is None for action in actions[settled:])


# --- files: written without following symlinks, only in safe directories -------------------


@pytest.fixture
def state_dir(tmp_path):
    """A state directory as the role makes it (its owner's only), and a file outside it that
    a worker would like root to overwrite."""
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    directory.chmod(0o700)  # whatever the umask
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    return directory, victim


def test_a_symlink_at_the_state_path_is_replaced_not_followed(state_dir):
    directory, victim = state_dir
    target = directory / "load-guard.json"
    target.symlink_to(victim)
    assert check.write_json(str(target), {"shed": {}})
    assert victim.read_text() == "precious\n"
    assert not target.is_symlink() and json.loads(target.read_text()) == {"shed": {}}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in directory.iterdir()] == ["load-guard.json"]  # no temporary left


def test_a_symlink_at_the_temporary_path_is_refused(state_dir, monkeypatch, caplog):
    directory, victim = state_dir
    monkeypatch.setattr(check.secrets, "token_hex", lambda _: "guessed")
    planted = directory / ".load-guard.json.guessed.tmp"
    planted.symlink_to(victim)
    dangling = directory / ".autoscale.json.guessed.tmp"
    dangling.symlink_to(directory.parent / "created-by-root")
    with pytest.raises(FileExistsError):
        check.write_file(str(directory / "load-guard.json"), "{}")
    assert not check.write_json(str(directory / "autoscale.json"), {})  # logged, not raised
    assert "did not write" in caplog.text
    assert victim.read_text() == "precious\n"
    assert not (directory.parent / "created-by-root").exists()
    assert planted.is_symlink() and dangling.is_symlink()  # left alone, not removed
    assert not (directory / "load-guard.json").exists()


def test_state_files_are_not_read_through_a_symlink(state_dir):
    directory, victim = state_dir
    victim.write_text('{"shed": {"imports": 2}}')
    (directory / "load-guard.json").symlink_to(victim)
    assert check.read_json(str(directory / "load-guard.json"), {}) == {}
    assert check.read_json(str(directory / "missing.json"), None) is None
    assert check.load_per_cpu(str(directory / "load-guard.json")) is None


@pytest.mark.parametrize("mode", [0o770, 0o720, 0o707, 0o777, 0o1777], ids=oct)
def test_a_directory_others_can_write_to_is_refused(state_dir, mode):
    directory, _ = state_dir
    directory.chmod(mode)
    target = directory / "last-workers.json"
    with pytest.raises(check.UnsafeDirectory):
        check.write_file(str(target), "{}")
    report = check.Report("workers")
    assert not check.write_json(str(target), {"problems": []}, report)
    assert report.code == check.WARNING and "refusing to write" in report.data["problems"][0]
    # Not even the Prometheus textfile directory, whoever owns it.
    assert not check.save(str(directory / "x.prom"), "", mode=0o644, any_owner=True)
    assert list(directory.iterdir()) == []
    with pytest.raises(check.UnsafeDirectory):
        check.open_log(str(directory / "check.log"))


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory away")
def test_a_directory_of_another_owner_is_refused_but_for_prometheus(state_dir):
    directory, _ = state_dir
    os.chown(directory, 65534, 65534)
    directory.chmod(0o755)
    with pytest.raises(check.UnsafeDirectory):
        check.write_file(str(directory / "load-guard.json"), "{}")
    check.write_file(str(directory / "brokerfleet-workers.prom"), "x 1\n", 0o644, any_owner=True)
    assert stat.S_IMODE((directory / "brokerfleet-workers.prom").stat().st_mode) == 0o644


def test_the_log_is_appended_to_and_never_through_a_symlink(state_dir):
    directory, victim = state_dir
    log = directory / "check.log"
    for line in ("one\n", "two\n"):
        with check.open_log(str(log)) as handle:
            handle.write(line)
    assert log.read_text() == "one\ntwo\n" and stat.S_IMODE(log.stat().st_mode) == 0o600
    log.unlink()
    log.symlink_to(victim)
    with pytest.raises(OSError):
        check.open_log(str(log))
    assert victim.read_text() == "precious\n"


# --- Prometheus textfile ----------------------------------------------------------------------

AWKWARD = ['a"b', "back\\slash", 'new\nline} 1\nbrokerfleet_check_status{check="x"', "plain"]


def test_label_values_are_escaped_as_the_exposition_format_wants():
    assert check.label("plain") == '"plain"'
    assert check.label('a"b') == '"a\\"b"'
    assert check.label("back\\slash") == '"back\\\\slash"'
    assert check.label("new\nline") == '"new\\nline"'
    assert check.label('\\"\n') == '"\\\\\\"\\n"'  # backslash first: no double escaping


def test_awkward_queue_and_group_names_cannot_forge_metrics():
    report = check.Report("broker")
    counts = {"ready": 1, "unacked": 2, "consumers": 3}
    dead = {"jobs": 4, "full": True, "max_length": 5}
    report.data["broker"] = {
        "usage": {},
        "queues": {name: counts for name in AWKWARD},
        "dead_letters": {name: dead for name in AWKWARD},
    }
    report.data["groups"] = {
        name: {
            "expected": 1,
            "running": 1,
            "shed": 0,
            "moved": 0,
            "paused": {"since": 0, "reason": name},
        }
        for name in AWKWARD
    }
    lines = report.prometheus().splitlines()
    # One line per sample: nothing a name holds starts a line of its own.
    assert len(lines) == 1 + 3 * len(AWKWARD) + 5 * len(AWKWARD) + 3 * len(AWKWARD)
    assert sum(line.startswith("brokerfleet_check_status") for line in lines) == 1
    assert 'brokerfleet_queue_ready{queue="a\\"b"} 1' in lines
    assert 'brokerfleet_workers_running{group="back\\\\slash"} 1' in lines
    forged = 'new\\nline} 1\\nbrokerfleet_check_status{check=\\"x\\"'
    assert f'brokerfleet_queue_consumers{{queue="{forged}"}} 3' in lines
    assert f'brokerfleet_dead_letter_full{{queue="{forged}"}} 1' in lines
    # Each line parses back: a name, one label whose value unescapes to the original, a value.
    pattern = re.compile(r'^(\w+)\{(\w+)="((?:[^"\\\n]|\\[\\"n])*)"\} (\S+)$')
    unescape = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
    seen = set()
    for line in lines:
        match = pattern.match(line)
        assert match, line
        value = re.sub(r'\\[\\"n]', lambda m: unescape[m.group()], match.group(3))
        seen.add(value)
    assert set(AWKWARD) | {"broker"} == seen


# A statistics answer as ActiveMQ 5.17 sends it to a STOMP subscriber of jms-map-xml (shortened;
# the newline in front ends the frame before it).
STATS_FRAME = (
    b"\nMESSAGE\ndestination:/temp-queue/brokerfleet-check\ntransformation:jms-map-xml\n"
    b"message-id:ID\\cbroker-1\\c1\n\n<map>\n  <entry>\n    <string>destinationName</string>\n"
    b"    <string>queue://jobs.high</string>\n  </entry>\n  <entry>\n    <string>size</string>\n"
    b"    <long>7</long>\n  </entry>\n  <entry>\n    <string>stomp</string>\n"
    b"    <string></string>\n  </entry>\n</map>\0"
    b"MESSAGE\ndestination:/temp-queue/brokerfleet-check\n\n<map/>\0"
)


def test_statistics_frames_are_read_one_at_a_time_and_their_maps_decoded():
    client = check.Stomp.__new__(check.Stomp)
    client.socket, server = socket.socketpair()
    client.buffer = b""
    with client.socket, server:
        server.sendall(STATS_FRAME)
        command, headers, body = client.read_frame()
        assert command == "MESSAGE"
        assert headers["destination"] == "/temp-queue/brokerfleet-check"
        assert check.stomp_map(body) == {
            "destinationName": "queue://jobs.high",
            "size": "7",
            "stomp": "",
        }
        assert check.stomp_map(client.read_frame()[2]) == {}  # the end of a list


def test_an_unknown_broker_kind_in_the_check_configuration_is_an_error():
    with pytest.raises(ValueError, match="unknown broker kind 'kafka'"):
        check.broker_sample({"kind": "kafka"})


def test_an_unknown_load_is_said_not_left_out():
    report = check.Report("status")
    report.data["load_per_cpu"] = None
    assert "  load per CPU unknown" in report.text().splitlines()
    report.data["load_per_cpu"] = 0.456
    assert "  load per CPU 0.46" in report.text().splitlines()


# --- pause and resume a group -------------------------------------------------------------

PAUSE = {"since": 1795428240, "reason": "database upgrade"}  # 2026-11-23 10:04 UTC


def test_a_paused_group_is_neither_shed_nor_given_back():
    paused = {"thumbnails": PAUSE}
    # thumbnails (importance 1) would be shed first; paused, imports is shed instead.
    assert run({}, [0.9, 0.95])[1][-1] == ("shed", "thumbnails")
    _, action = check.guard_step({"above": 1}, 0.9, GROUPS, 0.8, 0.5, 2, paused)
    assert action == ("shed", "imports")
    # What was shed before the pause stays shed; another group is given back instead.
    state = {"below": 1, "shed": {"thumbnails": 1, "imports": 1}}
    state, action = check.guard_step(state, 0.3, GROUPS, 0.8, 0.5, 2, paused)
    assert action == ("restore", "imports")
    state, action = check.guard_step({**state, "below": 1}, 0.3, GROUPS, 0.8, 0.5, 2, paused)
    assert action is None and state["shed"] == {"thumbnails": 1}


def test_autoscale_neither_moves_to_nor_from_a_paused_group():
    # imports' long backlog is expected while it is paused: no worker moves to it.
    assert check.autoscale_step({}, FLEET, {"imports": 600}, 300, {"imports"})[1] is None
    # thumbnails, paused and idle, lends nothing: reports (idle too) does.
    moved, action = check.autoscale_step({}, FLEET, {"imports": 600}, 300, {"thumbnails"})
    assert action == ("move", "reports", "imports")
    # A paused group keeps what it gained: nothing returns while it is paused.
    before = {"imports": 2, "thumbnails": -2, "reports": 0}
    assert check.autoscale_step(before, FLEET, {}, 300, {"imports"}) == (before, None)


def test_no_worker_of_a_paused_group_is_expected_to_run():
    groups = [
        {**GROUPS[0], "programs": programs("imports", 4)},
        {**GROUPS[1], "programs": programs("thumbnails", 2)},
    ]
    expected = check.expected_processes(groups, {"thumbnails": 1}, {"imports": PAUSE})
    assert expected == {
        "imports-00": False,
        "imports-01": False,
        "imports-02": False,
        "imports-03": False,
        "thumbnails-00": True,
        "thumbnails-01": False,
    }


def test_the_backlog_of_a_paused_group_is_expected_not_critical():
    found = check.broker_problems(
        sample(
            imports=queue(ready=120, consumers=0),
            **{"reports.high": queue(ready=3, consumers=0), "imports.dead": queue(ready=2)},
        ),
        QUEUES,
        {"imports": PAUSE},
    )
    assert found == [
        (
            check.OK,
            "queue imports: 120 jobs waiting, as expected: group imports paused since"
            " 2026-11-23 10:04 UTC (database upgrade)",
        ),
        (check.WARNING, "queue imports.dead: 2 failed jobs to look at" + REQUEUE_IMPORTS),
        (
            check.CRITICAL,
            "queue reports.high: 3 jobs waiting and no consumer"
            " (workers of group reports down or shed)",
        ),
    ]


def test_the_status_text_and_metrics_show_a_paused_group():
    report = check.Report("status")
    report.note("queue imports: 120 jobs waiting, as expected: group imports paused since x")
    report.data["groups"] = {
        "imports": {"expected": 0, "running": 0, "moved": 0, "shed": 0, "paused": PAUSE},
        "reports": {"expected": 1, "running": 1, "moved": 0, "shed": 0, "paused": None},
    }
    lines = report.text().splitlines()
    assert lines[0] == "brokerfleet status OK"
    assert "  queue imports: 120 jobs waiting, as expected: group imports paused since x" in lines
    assert (
        "  imports: 0 running of 0 expected"
        " (paused since 2026-11-23 10:04 UTC (database upgrade))" in lines
    )
    assert "  reports: 1 running of 1 expected" in lines
    metrics = report.prometheus().splitlines()
    assert 'brokerfleet_group_paused{group="imports"} 1' in metrics
    assert 'brokerfleet_group_paused{group="reports"} 0' in metrics


def test_the_metrics_give_each_group_s_workers_moved_by_autoscale():
    report = check.Report("workers")
    report.data["groups"] = {
        "imports": {"expected": 5, "running": 5, "moved": 2, "shed": 0, "paused": None},
        "thumbnails": {"expected": 0, "running": 0, "moved": -2, "shed": 0, "paused": None},
        "reports": {"expected": 2, "running": 2, "moved": 0, "shed": 0, "paused": None},
    }
    metrics = report.prometheus().splitlines()
    assert 'brokerfleet_workers_moved{group="imports"} 2' in metrics
    assert 'brokerfleet_workers_moved{group="thumbnails"} -2' in metrics
    assert 'brokerfleet_workers_moved{group="reports"} 0' in metrics  # 0, not missing


def test_pause_and_resume_take_a_group_and_only_they_do():
    args = check.arguments(["pause", "imports", "--reason", "db"])
    assert (args.check, args.group, args.reason) == ("pause", "imports", "db")
    assert check.arguments(["resume", "imports"]).group == "imports"
    for argv in (["pause"], ["workers", "imports"], ["resume", "imports", "--reason", "x"]):
        with pytest.raises(SystemExit) as exit:
            check.arguments(argv)
        assert exit.value.code == 2


class Supervisor:
    """supervisord's XML-RPC interface, as far as the check uses it: stopping is at once."""

    def __init__(self, running):
        self.states = {name: "RUNNING" for name in running}
        self.calls = []

    def getState(self):  # noqa: N802 - supervisor's name
        return {"statename": "RUNNING"}

    def getAllProcessInfo(self):  # noqa: N802
        return [{"name": name, "statename": state} for name, state in self.states.items()]

    def startProcess(self, name, wait):  # noqa: N802
        self.calls.append(("start", name))
        self.states[name] = "RUNNING"

    def stopProcess(self, name, wait):  # noqa: N802
        self.calls.append(("stop", name))
        self.states[name] = "STOPPED"


@pytest.fixture
def host(state_dir, monkeypatch):
    """A worker host in a temporary directory: its manifest (imports: 3 of 4 programs, one of
    them shed; reports), broker.json naming a third group, and supervisord running them."""
    directory, _ = state_dir
    group = {"min": 1, "max": None, "importance": 3, "job_seconds": 5, "queues": []}
    manifest = {
        "format": check.FLEET_FORMAT,
        "groups": [
            {**group, "name": "imports", "programs": programs("imports", 4), "processes": 3},
            {**group, "name": "reports", "programs": programs("reports", 1), "processes": 1},
        ],
    }
    broker = {"format": check.BROKER_FORMAT, "queues": [{"name": "mail", "group": "mail"}]}
    for name, data in (("fleet.json", manifest), ("broker.json", broker)):
        (directory / name).write_text(json.dumps(data))
    (directory / "load-guard.json").write_text(json.dumps({"shed": {"imports": 1}}))
    for constant, name in (
        ("MANIFEST", "fleet.json"),
        ("BROKER_CONFIG", "broker.json"),
        ("GUARD_STATE", "load-guard.json"),
        ("AUTOSCALE_STATE", "autoscale.json"),
        ("PAUSE_STATE", "paused.json"),
        ("QUIESCE_STATE", "quiesced.json"),
        ("WORKERS_LOCK", "workers.lock"),
    ):
        monkeypatch.setattr(check, constant, str(directory / name))
    rpc = Supervisor(["imports-00", "imports-01", "reports-00"])
    rpc.states.update({"imports-02": "STOPPED", "imports-03": "STOPPED"})  # shed, spare
    monkeypatch.setattr(check, "supervisor", lambda: rpc)
    return directory, rpc


def command(argv):
    args = check.arguments(argv)
    report = check.Report(args.check)
    check.COMMANDS[args.check](args, report)
    return report


def test_pause_records_then_stops_the_group_and_resume_starts_it_less_the_shed(host, capsys):
    directory, rpc = host
    report = command(["pause", "imports", "--reason", "database\nupgrade"])
    assert report.code == check.OK, report.data
    pause = json.loads((directory / "paused.json").read_text())["imports"]
    assert pause["reason"] == "database upgrade"  # one line
    assert stat.S_IMODE((directory / "paused.json").stat().st_mode) == 0o600
    assert rpc.calls == [("stop", "imports-00"), ("stop", "imports-01")]
    assert rpc.states["reports-00"] == "RUNNING"
    assert report.data["actions"][0].startswith("group imports paused since ")
    assert check.read_paused() == {"imports": pause}

    # The cron check now leaves it stopped, and stops a worker started by hand.
    rpc.states["imports-01"] = "RUNNING"
    groups = check.read_manifest(report)
    paused = check.read_paused()
    expected = check.expected_processes(groups, {"imports": 1}, paused)
    check.apply_expected(rpc, expected, report, groups, paused)
    assert "stopped imports-01 (its group is paused)" in report.data["actions"]

    # Paused again: the time stays, the reason may change.
    command(["pause", "imports", "--reason", "longer"])
    again = check.read_paused()["imports"]
    assert again == {"since": pause["since"], "reason": "longer"}

    rpc.calls.clear()
    report = command(["resume", "imports"])
    assert report.code == check.OK, report.data
    assert check.read_paused() == {}
    assert rpc.calls == [("start", "imports-00"), ("start", "imports-01")]  # imports-02 shed
    assert command(["resume", "imports"]).data["notes"] == ["group imports is not paused"]


def test_a_group_known_only_from_the_broker_is_recorded_and_nothing_stopped(host):
    _, rpc = host
    report = command(["pause", "mail"])
    assert report.code == check.OK
    assert set(check.read_paused()) == {"mail"} and rpc.calls == []
    assert report.data["notes"] == ["no worker of mail runs on this host: nothing to stop"]


def test_an_unknown_group_is_refused_naming_the_known_ones(host):
    report = command(["pause", "imprts"])
    assert report.code == check.CRITICAL
    assert report.data["problems"] == [
        "no group 'imprts' on this host; it knows imports, mail, reports"
    ]
    assert check.read_paused() == {}
    assert command(["resume", "imprts"]).code == check.CRITICAL


def test_a_pause_of_a_group_since_removed_can_be_forgotten(host):
    directory, _ = host
    (directory / "paused.json").write_text(json.dumps({"gone": PAUSE}))
    assert command(["resume", "gone"]).code == check.OK
    assert check.read_paused() == {}


# --- quiesce and unquiesce the fleet of a host around a broker restart ------------------------

RESTART = "broker restart by site.yml"


def workers_run(directory):
    """One run of the cron workers check, its load between the guard's thresholds."""
    (directory / "load").write_text("0.6\n")
    args = check.arguments(["workers", "--load-high", "0.8", "--load-low", "0.5", "--runs", "3"])
    args.autoscale_horizon, args.load_source = 0, str(directory / "load")
    report = check.Report("workers")
    check.check_workers(args, report)
    return report


def quiesced(directory):
    return json.loads((directory / "quiesced.json").read_text())


def test_quiesce_and_unquiesce_take_no_group_and_quiesce_a_time():
    args = check.arguments(["quiesce", "--for", "600", "--reason", "broker\nrestart"])
    assert (args.check, args.seconds, args.reason) == ("quiesce", 600, "broker restart")
    assert check.arguments(["unquiesce"]).seconds is None
    for argv in (
        ["quiesce"],
        ["quiesce", "imports", "--for", "600"],
        ["quiesce", "--for", "0"],
        ["unquiesce", "--reason", "x"],
        ["unquiesce", "imports"],
        ["pause", "imports", "--for", "600"],
    ):
        with pytest.raises(SystemExit) as exit:
            check.arguments(argv)
        assert exit.value.code == 2, argv


def test_a_quiesce_holds_like_a_pause_until_it_expires_and_a_pause_wins():
    quiesce = {"until": 1000, "reason": RESTART, "groups": ["imports", "reports"]}
    held = check.held_groups({"reports": PAUSE}, quiesce, 999)
    assert held == {"imports": {"until": 1000, "reason": RESTART}, "reports": PAUSE}
    assert check.held_groups({"reports": PAUSE}, quiesce, 1000) == {"reports": PAUSE}
    assert check.held_groups({}, None, 0) == {}
    # The broker check, the guard and autoscale take them as paused.
    found = check.broker_problems(
        sample(imports=queue(ready=120, consumers=0)), QUEUES[:1], held, None
    )
    assert found == [
        (
            check.OK,
            "queue imports: 120 jobs waiting, as expected: group imports quiesced until"
            f" {check.utc(1000)} ({RESTART})",
        )
    ]
    assert check.autoscale_step({}, FLEET, {"imports": 600}, 300, held)[1] is None


def test_quiesce_stops_the_unpaused_groups_and_leaves_a_paused_one_alone(host):
    directory, rpc = host
    (directory / "paused.json").write_text(json.dumps({"reports": PAUSE}))
    rpc.states["reports-00"] = "STOPPED"
    before = time.time()
    report = command(["quiesce", "--for", "600", "--reason", RESTART])
    assert report.code == check.OK, report.data
    record = quiesced(directory)
    assert record["groups"] == ["imports"] and record["reason"] == RESTART
    assert int(before) + 600 <= record["until"] <= time.time() + 600
    assert stat.S_IMODE((directory / "quiesced.json").stat().st_mode) == 0o600
    assert rpc.calls == [("stop", "imports-00"), ("stop", "imports-01")]
    assert report.data["actions"] == [
        f"quiesced imports ({RESTART})",
        "stopped imports-00 (its group is quiesced)",
        "stopped imports-01 (its group is quiesced)",
    ]
    assert report.data["notes"][0].startswith("every worker stopped; held until ")
    # The pause is the operator's: untouched, and not the quiesce's to end.
    assert check.read_paused() == {"reports": PAUSE}


def test_the_workers_check_keeps_a_quiesce_then_ends_it_once_expired(host):
    directory, rpc = host
    command(["quiesce", "--for", "600", "--reason", RESTART])
    rpc.states["imports-01"] = "RUNNING"  # started by hand
    rpc.calls.clear()
    report = workers_run(directory)
    assert report.data["actions"] == ["stopped imports-01 (its group is quiesced)"]
    assert report.data["groups"]["imports"]["expected"] == 0
    assert report.data["groups"]["imports"]["paused"]["reason"] == RESTART
    assert set(quiesced(directory)["groups"]) == {"imports", "reports"}

    # The play died before its unquiesce: once the time is up, the check starts them.
    (directory / "quiesced.json").write_text(json.dumps({**quiesced(directory), "until": 1000}))
    rpc.calls.clear()
    report = workers_run(directory)
    assert report.code == check.WARNING
    assert report.data["actions"][0] == (
        f"the quiesce of imports, reports ({RESTART}) expired at {check.utc(1000)}:"
        " starting their workers again"
    )
    started = [("start", p) for p in ("imports-00", "imports-01", "reports-00")]
    assert rpc.calls == started  # imports-02 stays shed
    assert quiesced(directory) == {} and check.read_quiesce() is None


def test_a_quiesced_host_leaves_a_stopped_supervisord_stopped(host, monkeypatch):
    directory, rpc = host
    command(["quiesce", "--for", "600"])
    monkeypatch.setattr(check, "supervisor_state", lambda: "DOWN")
    monkeypatch.setattr(check.subprocess, "run", lambda *a, **k: pytest.fail("started"))
    report = workers_run(directory)
    assert report.code == check.OK and report.data["actions"] == []
    assert report.data["notes"][0].startswith("supervisord is down: left so while quiesced")


def test_unquiesce_starts_the_groups_but_one_paused_meanwhile(host):
    directory, rpc = host
    command(["quiesce", "--for", "600", "--reason", RESTART])
    assert command(["pause", "reports", "--reason", "db"]).code == check.OK
    rpc.calls.clear()
    report = command(["unquiesce"])
    assert report.code == check.OK, report.data
    assert report.data["actions"][0] == f"unquiesced imports, reports ({RESTART})"
    assert rpc.calls == [("start", "imports-00"), ("start", "imports-01")]  # imports-02 shed
    assert report.data["notes"] == [
        f"{check.pause_text('reports', check.read_paused()['reports'])}: not started"
    ]
    assert set(check.read_paused()) == {"reports"} and quiesced(directory) == {}
    assert command(["unquiesce"]).data["notes"] == ["nothing is quiesced on this host"]


def test_a_group_paused_and_resumed_while_quiesced_waits_for_the_unquiesce(host):
    _, rpc = host
    command(["quiesce", "--for", "600"])
    command(["pause", "imports"])
    rpc.calls.clear()
    report = command(["resume", "imports"])
    assert report.code == check.OK and rpc.calls == []
    assert report.data["notes"][0].startswith("group imports quiesced until ")
    command(["unquiesce"])
    assert rpc.calls == [("start", "imports-00"), ("start", "imports-01"), ("start", "reports-00")]


def test_quiesce_with_supervisord_down_records_and_warns(host, monkeypatch):
    directory, rpc = host

    def down():
        raise ConnectionRefusedError("no socket")

    monkeypatch.setattr(rpc, "getAllProcessInfo", down)
    report = command(["quiesce", "--for", "600"])
    assert report.code == check.WARNING
    assert report.data["problems"] == ["supervisord is down: the workers check keeps them stopped"]
    assert set(quiesced(directory)["groups"]) == {"imports", "reports"}


def test_a_host_without_workers_has_nothing_to_quiesce(host):
    directory, rpc = host
    (directory / "fleet.json").unlink()
    report = command(["quiesce", "--for", "600"])
    assert report.code == check.OK and rpc.calls == []
    assert report.data["notes"] == [
        "no worker group runs unpaused on this host: nothing to quiesce"
    ]
    assert not (directory / "quiesced.json").exists()
