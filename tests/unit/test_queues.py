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
    plan = sizing.fleet_plan([group("thumbs", job_seconds=0.01)], 2)
    assert plan[0]["poll_order"] == ["thumbs"] and plan[0]["poll_when_idle"] == []
    assert plan[0]["prefetch"] == plan[0]["openwire_prefetch"] == 10


def test_activemq_policies_per_consumed_queue():
    groups = [
        group("jobs", priority_levels={"high": 2, "low": 1}),
        group("thumbs", job_seconds=0.02),
        group("thumbs_slow", queue="thumbs", job_seconds=3),
    ]
    assert sizing.activemq_queue_policies(groups) == [
        {"queue": "jobs.high", "prefetch": 1, "prioritized": True},
        {"queue": "jobs.low", "prefetch": 1, "prioritized": True},
        # Two groups share a queue: the smaller prefetch wins.
        {"queue": "thumbs", "prefetch": 1, "prioritized": False},
    ]


# --- RabbitMQ policies and queues -------------------------------------------------------------


# The policy of a classic work queue a, with max_length 10.
CLASSIC_A = {
    "name": "brokerfleet-a",
    "pattern": "^a$",
    "definition": {
        "dead-letter-exchange": "",
        "dead-letter-routing-key": "a.dead",
        "max-length": 10,
        "overflow": "reject-publish",
    },
}
# The policy of its dead-letter queue a.dead where it has one (quorum queues).
DEAD_A = {
    "name": "brokerfleet-a.dead",
    "pattern": r"^a\.dead$",
    "definition": {"max-length": 10, "overflow": "reject-publish"},
}


def test_classic_policies_dead_letter_each_queue_and_bound_only_the_work_queue():
    # No policy for a.dead: a classic queue dead-letters at most once, so a length limit on
    # a.dead would drop failed jobs without a trace.
    assert queues.rabbitmq_queue_policies([group("a")], max_length=10) == [CLASSIC_A]


def test_dead_letter_queues_are_bounded_only_where_nothing_is_lost():
    assert queues.dead_letter_max_length(10, "quorum") == 10
    assert queues.dead_letter_max_length(0, "quorum") is None  # 0: no limit
    assert queues.dead_letter_max_length(10, "classic") is None
    assert queues.dead_letter_max_length(10, "quorum", "activemq") is None
    with pytest.raises(ValueError, match="broker_queue_type must be one of"):
        queues.dead_letter_max_length(10, "stream")
    with pytest.raises(ValueError, match="broker kind must be one of"):
        queues.dead_letter_max_length(10, "classic", "kafka")


def test_an_upgrade_removes_the_classic_dead_letter_limit_once():
    # What an earlier version applied to a classic vhost: a.dead bounded like its work queue.
    before = [CLASSIC_A, DEAD_A]
    wanted = queues.rabbitmq_queue_policies([group("a")], max_length=10)
    current = [as_listed(p) for p in before]
    assert queues.rabbitmq_policy_changes(wanted, current) == {
        "apply": [],
        "remove": ["brokerfleet-a.dead"],
    }
    # Once removed, a re-run changes nothing.
    assert queues.rabbitmq_policy_changes(wanted, current[:1]) == {"apply": [], "remove": []}


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


# --- quorum queues -----------------------------------------------------------------------------


def test_quorum_policies_add_a_delivery_limit_and_at_least_once_dead_lettering():
    policies = queues.rabbitmq_queue_policies(
        [group("a", delivery_limit=5)], max_length=10, queue_type="quorum"
    )
    quorum = {"delivery-limit": 5, "dead-letter-strategy": "at-least-once"}
    assert policies == [
        {**CLASSIC_A, "definition": {**CLASSIC_A["definition"], **quorum}},
        # The dead-letter queue keeps its length limit only: no delivery limit there.
        DEAD_A,
    ]


def test_quorum_work_queues_reject_publish_even_without_a_length_limit():
    # At-least-once dead-lettering falls back to at-most-once under drop-head, the default.
    policies = queues.rabbitmq_queue_policies([group("a")], max_length=0, queue_type="quorum")
    assert policies == [
        {
            "name": "brokerfleet-a",
            "pattern": "^a$",
            "definition": {
                "dead-letter-exchange": "",
                "dead-letter-routing-key": "a.dead",
                "overflow": "reject-publish",
                "delivery-limit": queues.DEFAULT_DELIVERY_LIMIT,
                "dead-letter-strategy": "at-least-once",
            },
        }
    ]


def test_each_group_gets_its_delivery_limit_and_the_default_applies_to_raw_groups():
    groups = [
        group("a", delivery_limit=3),
        {"name": "b", "command": "/bin/true"},  # raw inventory value: no defaults filled in
        group("c", queue="shared", delivery_limit=7),
        group("d", queue="shared", delivery_limit=4),  # shared queue: the smallest wins
        group("e", delivery_limit=None),
    ]
    policies = queues.rabbitmq_queue_policies(groups, max_length=10, queue_type="quorum")
    limits = {
        p["name"]: p["definition"].get("delivery-limit")
        for p in policies
        if not p["name"].endswith(".dead")
    }
    assert limits == {
        "brokerfleet-a": 3,
        "brokerfleet-b": 20,
        "brokerfleet-shared": 4,
        "brokerfleet-e": 20,
    }
    assert all(
        "delivery-limit" not in p["definition"] for p in policies if p["name"].endswith(".dead")
    )


def test_every_priority_level_queue_gets_the_quorum_policy():
    groups = [group("jobs", delivery_limit=9, priority_levels={"high": 2, "low": 1, "very_low": 0})]
    policies = queues.rabbitmq_queue_policies(groups, max_length=10, queue_type="quorum")
    work = [p for p in policies if not p["name"].endswith(".dead")]
    assert [p["name"] for p in work] == [
        "brokerfleet-jobs.high",
        "brokerfleet-jobs.low",
        "brokerfleet-jobs.very_low",
    ]
    for policy in work:
        assert policy["definition"]["delivery-limit"] == 9
        assert policy["definition"]["dead-letter-strategy"] == "at-least-once"
        assert policy["definition"]["overflow"] == "reject-publish"
    # The poll order is the worker's business and does not depend on the queue type.
    assert queues.group_poll_queues(groups[0])["order"] == ["jobs.high", "jobs.low", "jobs.high"]


def test_extra_keys_win_but_may_not_silently_undo_at_least_once():
    extra = {"message-ttl": 60000, "delivery-limit": 2}
    policies = queues.rabbitmq_queue_policies([group("a")], 10, extra, "quorum")
    assert policies[0]["definition"]["message-ttl"] == 60000
    assert policies[0]["definition"]["delivery-limit"] == 2
    with pytest.raises(ValueError, match="needs overflow reject-publish"):
        queues.rabbitmq_queue_policies([group("a")], 10, {"overflow": "drop-head"}, "quorum")
    at_most_once = {"overflow": "drop-head", "dead-letter-strategy": "at-most-once"}
    definition = queues.rabbitmq_queue_policies([group("a")], 10, at_most_once, "quorum")[0]
    assert definition["definition"]["overflow"] == "drop-head"
    # Classic queues have no dead-letter strategy to protect.
    classic = queues.rabbitmq_queue_policies([group("a")], 10, {"overflow": "drop-head"})
    assert classic[0]["definition"]["overflow"] == "drop-head"


def test_an_unknown_queue_type_is_refused():
    with pytest.raises(ValueError, match="broker_queue_type must be one of classic, quorum"):
        queues.rabbitmq_queue_policies([group("a")], 10, None, "stream")
    with pytest.raises(ValueError, match="got 'lazy'"):
        queues.rabbitmq_missing_queues(["a"], [], "lazy")


limits_strategy = st.one_of(st.none(), st.integers(min_value=1, max_value=1000))
groups_strategy = st.lists(
    st.builds(
        lambda name, queue, limit, levels: {
            "name": name,
            "command": "/bin/true",
            **({"queue": queue} if queue else {}),
            **({"delivery_limit": limit} if limit is not None else {}),
            **({"priority_levels": levels} if levels else {}),
        },
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from([None, "shared"]),
        limits_strategy,
        st.one_of(st.none(), st.just({"high": 1, "low": 1})),
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda g: g["name"],
)


@given(groups=groups_strategy, max_length=st.integers(0, 10**6), extra=st.sampled_from([None, {}]))
def test_classic_policies_do_not_change_and_quorum_only_adds_keys(groups, max_length, extra):
    classic = queues.rabbitmq_queue_policies(groups, max_length, extra)
    assert classic == queues.rabbitmq_queue_policies(groups, max_length, extra, "classic")
    quorum = queues.rabbitmq_queue_policies(groups, max_length, extra, "quorum")
    # Classic .dead queues are never bounded; quorum ones are, by max_length, when it is set.
    assert not [p for p in classic if p["name"].endswith(".dead")]
    dead = [p for p in quorum if p["name"].endswith(".dead")]
    work = [p for p in quorum if not p["name"].endswith(".dead")]
    assert [p["name"] for p in work] == [p["name"] for p in classic]
    limit = {"max-length": max_length, "overflow": "reject-publish"}
    assert dead == [
        {
            "name": f"{p['name']}.dead",
            "pattern": f"{p['pattern'][:-1]}\\.dead$",
            "definition": limit,
        }
        for p in work
        if max_length
    ]
    limits = queues.queue_delivery_limits(groups)
    for before, after in zip(classic, work, strict=True):
        assert after["pattern"] == before["pattern"]
        for key in ("delivery-limit", "dead-letter-strategy"):
            assert key not in before["definition"]
        queue = before["name"].removeprefix("brokerfleet-")
        assert after["definition"] == {
            **before["definition"],
            "overflow": "reject-publish",
            "dead-letter-strategy": "at-least-once",
            "delivery-limit": limits[queue],
        }
        # The group's own limit, the default when unset, the smallest when groups share it.
        assert limits[queue] == min(
            g.get("delivery_limit") or queues.DEFAULT_DELIVERY_LIMIT
            for g in groups
            if queue in queues.consumed_queues(g)
        )


def test_quorum_policies_converge_once_applied():
    wanted = queues.rabbitmq_queue_policies([group("a", delivery_limit=5)], 10, None, "quorum")
    current = [as_listed(p) for p in wanted]
    assert queues.rabbitmq_policy_changes(wanted, current) == {"apply": [], "remove": []}
    # Switching a vhost's classic policies to quorum rewrites the work-queue policies and
    # bounds the dead-letter queues.
    classic = [as_listed(p) for p in queues.rabbitmq_queue_policies([group("a")], 10)]
    assert queues.rabbitmq_policy_changes(wanted, classic) == {"apply": wanted, "remove": []}
    # And back: the dead-letter queues' limit goes.
    back = queues.rabbitmq_queue_policies([group("a")], 10)
    assert queues.rabbitmq_policy_changes(back, current) == {
        "apply": back,
        "remove": ["brokerfleet-a.dead"],
    }


def test_missing_queues_of_the_wanted_type():
    current = [
        {"name": "a", "durable": True, "type": "quorum"},
        {"name": "a.dead", "durable": True, "type": "quorum"},
    ]
    assert queues.rabbitmq_missing_queues(["a", "a.dead", "b", "b.dead"], current, "quorum") == [
        "b",
        "b.dead",
    ]


def test_a_queue_of_another_type_is_refused_naming_it_and_what_to_do():
    current = [
        {"name": "a", "durable": True, "type": "classic"},
        {"name": "a.dead", "durable": True, "type": "classic"},
        {"name": "q", "durable": True, "type": "quorum"},
        {"name": "s", "durable": True, "type": "stream"},
    ]
    with pytest.raises(ValueError) as refused:
        queues.rabbitmq_missing_queues(["a", "a.dead", "b"], current, "quorum")
    message = str(refused.value)
    for expected in (
        "queue 'a' exists as a classic queue but broker_queue_type is 'quorum'",
        "queue 'a.dead' exists as a classic queue",
        "RabbitMQ cannot change a queue's type",
        "drain it and delete it, and the next run declares it as a quorum queue",
        "or set broker_queue_type: classic to keep it",
    ):
        assert expected in message
    assert "'b'" not in message
    with pytest.raises(
        ValueError, match="queue 'q' exists as a quorum queue but broker_queue_type"
    ):
        queues.rabbitmq_missing_queues(["q"], current, "classic")
    with pytest.raises(ValueError, match="'s' exists as a stream queue") as stream:
        queues.rabbitmq_missing_queues(["s"], current, "classic")
    assert "set broker_queue_type" not in str(stream.value)  # stream is not a choice
    # The non-durable refusal stands, for either type.
    with pytest.raises(ValueError, match="'t' exists but is not durable"):
        queues.rabbitmq_missing_queues(["t"], [{"name": "t", "durable": False}], "quorum")


def test_a_queue_listed_without_a_type_is_classic():
    current = [{"name": "a", "durable": True}]
    assert queues.rabbitmq_missing_queues(["a", "b"], current, "classic") == ["b"]
    with pytest.raises(ValueError, match="exists as a classic queue"):
        queues.rabbitmq_missing_queues(["a"], current, "quorum")


@given(
    have=st.dictionaries(
        st.sampled_from(["a", "a.dead", "b", "b.dead"]), st.sampled_from(["classic", "quorum"])
    ),
    wanted_type=st.sampled_from(["classic", "quorum"]),
)
def test_missing_queues_either_lists_the_absent_ones_or_names_every_mismatch(have, wanted_type):
    wanted = ["a", "a.dead", "b", "b.dead"]
    current = [{"name": n, "durable": True, "type": t} for n, t in have.items()]
    mismatched = [n for n in wanted if n in have and have[n] != wanted_type]
    if mismatched:
        with pytest.raises(ValueError) as refused:
            queues.rabbitmq_missing_queues(wanted, current, wanted_type)
        for name in mismatched:
            assert f"queue {name!r} exists as a {have[name]} queue" in str(refused.value)
    else:
        missing = queues.rabbitmq_missing_queues(wanted, current, wanted_type)
        assert missing == [n for n in wanted if n not in have]


def test_checked_queues_name_each_queue_its_group_and_dead_letter_queue():
    groups = [
        {"name": "imports", "queue": "wallabag.import"},
        {"name": "reports", "priority_levels": {"high": 2, "low": 1}, "max_drain_seconds": 60},
        {"name": "more-imports", "queue": "wallabag.import", "max_drain_seconds": 900},
    ]

    def entry(name, group, level, dead, drain=None):
        return {
            "name": name,
            "group": group,
            "level": level,
            "max_length": None,
            "max_drain_seconds": drain,
            "dead": dead,
            "dead_max_length": None,
        }

    # A queue's long-wait limit is the smallest of the groups that drain it: each one's holds.
    assert queues.checked_queues(groups, "rabbitmq") == [
        entry("wallabag.import", "imports", None, "wallabag.import.dead", 900),
        entry("reports.high", "reports", "high", "reports.high.dead", 60),
        entry("reports.low", "reports", "low", "reports.low.dead", 60),
    ]
    groups[0]["max_drain_seconds"] = 1800.5
    assert queues.checked_queues(groups, "rabbitmq")[0]["max_drain_seconds"] == 900
    groups[0]["max_drain_seconds"] = 300.5
    assert queues.checked_queues(groups, "rabbitmq")[0]["max_drain_seconds"] == 300.5
    dead = [q["dead"] for q in queues.checked_queues(groups, "activemq")]
    assert dead[0] == "ActiveMQ.DLQ.Queue.wallabag.import"


@pytest.mark.parametrize(
    "extra", [None, {}, {"message-ttl": 60000}, {"max-length": 500}, {"max-length": 0}]
)
def test_the_check_is_told_the_work_queue_limit_the_policies_set(extra):
    groups = [group("a"), group("b", priority_levels={"high": 1})]
    for queue_type in queues.QUEUE_TYPES:
        for max_length in (0, 10):
            policies = queues.rabbitmq_queue_policies(groups, max_length, extra, queue_type)
            set_by_policy = {
                p["name"].removeprefix("brokerfleet-"): p["definition"].get("max-length") or None
                for p in policies
                if not p["name"].endswith(".dead")
            }
            checked = queues.checked_queues(groups, "rabbitmq", max_length, queue_type, extra)
            assert {q["name"]: q["max_length"] for q in checked} == set_by_policy
    # ActiveMQ's queues have no length limit (its store limit bounds them).
    checked = queues.checked_queues(groups, "activemq", 10, "classic", extra)
    assert {q["max_length"] for q in checked} == {None}


def test_the_check_is_told_the_dead_letter_limit_the_policies_set():
    groups = [group("a"), group("b", priority_levels={"high": 1})]
    for queue_type in queues.QUEUE_TYPES:
        for max_length in (0, 10):
            policies = queues.rabbitmq_queue_policies(groups, max_length, None, queue_type)
            set_by_policy = {
                p["name"].removeprefix("brokerfleet-"): p["definition"]["max-length"]
                for p in policies
                if p["name"].endswith(".dead")
            }
            checked = queues.checked_queues(groups, "rabbitmq", max_length, queue_type)
            assert {q["dead"]: q["dead_max_length"] for q in checked} == {
                dead: set_by_policy.get(dead) for dead in ("a.dead", "b.high.dead")
            }
    # ActiveMQ's dead-letter queues have no length limit (its store limit bounds them).
    checked = queues.checked_queues(groups, "activemq", 10, "quorum")
    assert {q["dead_max_length"] for q in checked} == {None}


def test_an_unknown_broker_kind_is_an_error_not_a_guess():
    with pytest.raises(ValueError, match="broker kind must be one of rabbitmq, activemq"):
        queues.dead_letter_queue("jobs", "kafka")
    group = {"name": "jobs", "queue": "jobs", "prefetch": 1, "poll_order": ["jobs"]}
    with pytest.raises(ValueError, match="got 'kafka'"):
        sizing.worker_environment(
            group, {"kind": "kafka", "host": "mq", "user": "u", "password": "p"}
        )
