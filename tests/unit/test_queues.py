"""Unit and property tests for plugins/module_utils/queues.py and the priority-level parts of
sizing."""

import json
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokerfleet import queues, sizing

EXAMPLE = {"very_high": 8, "high": 4, "medium": 2, "low": 1, "very_low": 0}


def group(name, **keys):
    return {"name": name, "command": "/bin/true", **keys}


# --- poll order -------------------------------------------------------------------------------


def test_poll_order_for_the_example_weights():
    order = queues.poll_order(EXAMPLE)
    assert order[:8] == [
        "very_high", "high", "very_high", "medium", "very_high", "high", "very_high", "low",
    ]  # fmt: skip
    assert Counter(order) == {"very_high": 8, "high": 4, "medium": 2, "low": 1}
    assert queues.poll_when_idle(EXAMPLE) == ["very_low"]


def test_poll_order_is_reduced_by_the_common_divisor():
    assert queues.poll_order({"high": 20, "low": 10}) == ["high", "low", "high"]


weights_strategy = st.dictionaries(
    st.sampled_from(queues.PRIORITY_LEVELS), st.integers(0, 12), min_size=1
).filter(lambda w: any(w.values()))


@given(weights=weights_strategy, start=st.integers(0, 200))
def test_every_window_of_one_cycle_holds_each_level_its_weight(weights, start):
    order = queues.poll_order(weights)
    shares = Counter(order)
    # The worker repeats the cycle; any window of one cycle's length, wherever it starts, polls
    # each level exactly its (reduced) weight times: starvation-free and proportional.
    repeated = order * (start // len(order) + 2)
    window = Counter(repeated[start % len(order) : start % len(order) + len(order)])
    assert window == shares
    assert set(shares) == {level for level, w in weights.items() if w > 0}
    ratios = {shares[level] / weights[level] for level in shares}
    assert len(ratios) == 1


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        ({"urgent": 1}, "unknown level 'urgent'"),
        ({"high": 0, "low": 0}, "at least one level needs a weight > 0"),
        ({"high": -1}, "weights must be integers >= 0"),
        ({"high": 1.5}, "weights must be integers >= 0"),
        ({}, "priority_levels must map levels"),
        ({"high": 999, "low": 2}, "poll cycle longer than"),
    ],
)
def test_bad_priority_levels_are_named(levels, expected):
    errors = sizing.group_errors([group("jobs", priority_levels=levels)])
    assert any(expected in e and "worker_groups[0] (name 'jobs')" in e for e in errors), errors


# --- queues per group -------------------------------------------------------------------------


def test_a_priority_group_consumes_one_queue_per_level_most_urgent_first():
    groups = [group("jobs", priority_levels={"low": 1, "very_high": 3}), group("mail", queue="m")]
    assert queues.group_queues(groups) == ["jobs.very_high", "jobs.low", "m"]


def test_plan_hands_workers_the_poll_order_and_prefetch_one_per_level_queue():
    plan = sizing.fleet_plan([group("jobs", job_seconds=0.1, priority_levels=EXAMPLE)], 4)
    jobs = plan[0]
    assert jobs["poll_order"][:3] == ["jobs.very_high", "jobs.high", "jobs.very_high"]
    assert jobs["poll_when_idle"] == ["jobs.very_low"]
    assert (jobs["prefetch"], jobs["openwire_prefetch"]) == (1, 0)


def test_plain_group_polls_its_queue_and_fast_jobs_keep_their_prefetch():
    plan = sizing.fleet_plan([group("thumbs", job_seconds=0.1)], 2)
    assert plan[0]["poll_order"] == ["thumbs"] and plan[0]["poll_when_idle"] == []
    assert plan[0]["prefetch"] == plan[0]["openwire_prefetch"] == 10


def test_activemq_policies_per_consumed_queue():
    groups = [
        group("jobs", priority_levels={"high": 2, "low": 1}),
        group("thumbs", job_seconds=0.2),
        group("thumbs_slow", queue="thumbs", job_seconds=3),
    ]
    assert sizing.activemq_queue_policies(groups) == [
        {"queue": "jobs.high", "prefetch": 1, "prioritized": True},
        {"queue": "jobs.low", "prefetch": 1, "prioritized": True},
        # Two groups share a queue: the smaller prefetch wins.
        {"queue": "thumbs", "prefetch": 1, "prioritized": False},
    ]


# --- RabbitMQ policies and queues -------------------------------------------------------------


def test_policies_dead_letter_each_queue_and_bound_both():
    policies = queues.rabbitmq_queue_policies([group("a")], max_length=10)
    assert policies == [
        {
            "name": "brokerfleet-a",
            "pattern": "^a$",
            "definition": {
                "dead-letter-exchange": "",
                "dead-letter-routing-key": "a.dead",
                "max-length": 10,
                "overflow": "reject-publish",
            },
        },
        {
            "name": "brokerfleet-a.dead",
            "pattern": r"^a\.dead$",
            "definition": {"max-length": 10, "overflow": "reject-publish"},
        },
    ]


def as_listed(policy, **changes):
    """A policy as `rabbitmqctl list_policies --formatter json` reports it (3.10: the
    definition as a JSON string)."""
    listed = {"vhost": "v", "apply-to": "queues", "priority": 0, **policy, **changes}
    return {**listed, "definition": json.dumps(listed["definition"])}


def test_policy_changes_write_only_what_differs_and_remove_stale_ones():
    wanted = queues.rabbitmq_queue_policies([group("a"), group("b")], max_length=10)
    current = [as_listed(p) for p in wanted]
    assert queues.rabbitmq_policy_changes(wanted, current) == {"apply": [], "remove": []}

    current[0] = as_listed(wanted[0], definition={"max-length": 5})
    current.append(as_listed({"name": "brokerfleet-gone", "pattern": "^gone$", "definition": {}}))
    current.append(as_listed({"name": "operator-ha", "pattern": ".*", "definition": {}}))
    assert queues.rabbitmq_policy_changes(wanted, current) == {
        "apply": [wanted[0]],
        "remove": ["brokerfleet-gone"],
    }
    assert queues.rabbitmq_policy_changes(wanted, [])["apply"] == wanted


def test_missing_queues_and_a_transient_one_refused():
    current = [{"name": "a", "durable": True}, {"name": "t", "durable": False}]
    assert queues.rabbitmq_missing_queues(["a", "b"], current) == ["b"]
    with pytest.raises(ValueError, match="'t' exists but is not durable"):
        queues.rabbitmq_missing_queues(["t"], current)


def test_checked_queues_name_each_queue_its_group_and_dead_letter_queue():
    groups = [
        {"name": "imports", "queue": "wallabag.import"},
        {"name": "reports", "priority_levels": {"high": 2, "low": 1}},
        {"name": "more-imports", "queue": "wallabag.import"},
    ]
    assert queues.checked_queues(groups, "rabbitmq") == [
        {"name": "wallabag.import", "group": "imports", "dead": "wallabag.import.dead"},
        {"name": "reports.high", "group": "reports", "dead": "reports.high.dead"},
        {"name": "reports.low", "group": "reports", "dead": "reports.low.dead"},
    ]
    dead = [q["dead"] for q in queues.checked_queues(groups, "activemq")]
    assert dead[0] == "ActiveMQ.DLQ.Queue.wallabag.import"


def test_an_unknown_broker_kind_is_an_error_not_a_guess():
    with pytest.raises(ValueError, match="broker kind must be one of rabbitmq, activemq"):
        queues.dead_letter_queue("jobs", "kafka")
    group = {"name": "jobs", "queue": "jobs", "prefetch": 1, "poll_order": ["jobs"]}
    with pytest.raises(ValueError, match="got 'kafka'"):
        sizing.worker_environment(
            group, {"kind": "kafka", "host": "mq", "user": "u", "password": "p"}
        )
