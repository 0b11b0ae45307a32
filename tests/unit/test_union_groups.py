"""worker_groups per worker host (plugins/module_utils/inputs.py union_groups, union_errors): the
broker declares the union, and refuses a group it could not declare once for every host."""

import pytest

from brokerfleet import inputs


def group(name, **keys):
    return {"name": name, "command": "/bin/true", **keys}


def names(groups):
    return [g["name"] for g in groups]


# --- the union --------------------------------------------------------------------------------


def test_the_union_holds_each_name_once_in_first_seen_order():
    by_host = {
        "w1": [group("imports"), group("thumbs")],
        "w2": [group("reports"), group("imports"), group("mail")],
        "w3": [group("thumbs"), group("archive")],
    }
    assert names(inputs.union_groups(by_host)) == [
        "imports",
        "thumbs",
        "reports",
        "mail",
        "archive",
    ]


def test_the_first_hosts_definition_wins():
    first = group("imports", weight=3, min=2, command="/usr/bin/a")
    later = group("imports", weight=1, max=4, command="/usr/bin/b")
    assert inputs.union_groups({"w1": [first], "w2": [later]}) == [first]
    assert inputs.union_groups({"w2": [later], "w1": [first]}) == [later]


def test_a_group_on_one_host_only_is_in_the_union():
    by_host = {"w1": [group("imports")], "w2": [group("imports"), group("pdf", queue="pdf.jobs")]}
    assert inputs.union_groups(by_host)[1] == group("pdf", queue="pdf.jobs")


def test_the_same_list_everywhere_is_that_list():
    groups = [group("imports"), group("thumbs", priority_levels={"high": 1})]
    by_host = {"w1": groups, "w2": list(groups), "w3": list(groups)}
    assert inputs.union_groups(by_host) == groups
    assert inputs.union_errors(by_host) == []


@pytest.mark.parametrize("unset", [None, "imports", {"name": "imports"}, 3])
def test_hosts_without_a_list_are_skipped(unset):
    by_host = {"w1": unset, "w2": [group("imports")], "w3": None}
    assert names(inputs.union_groups(by_host)) == ["imports"]
    assert inputs.union_errors(by_host) == []


def test_entries_without_a_name_are_left_to_the_hosts_own_check():
    by_host = {"w1": ["imports", {"command": "/bin/true"}, {"name": 7}, group("a")]}
    assert names(inputs.union_groups(by_host)) == ["a"]
    assert inputs.union_errors(by_host) == []


def test_the_fallback_serves_when_no_worker_host_sets_worker_groups():
    own = [group("imports")]
    assert inputs.union_groups({}, own) == own
    assert inputs.union_groups({"w1": None, "w2": None}, own) == own
    assert inputs.union_groups({}) == []
    # A worker host's list, even empty, is the answer: the fallback is not mixed in.
    assert inputs.union_groups({"w1": [], "w2": None}, own) == []
    assert inputs.union_groups({"w1": [group("thumbs")]}, own) == [group("thumbs")]


# --- groups the broker could not declare once -------------------------------------------------


@pytest.mark.parametrize(
    ("first", "later", "key", "shown"),
    [
        ({"queue": "imports.a"}, {"queue": "imports.b"}, "queue", "'imports.a' on host w1 but "),
        ({}, {"queue": "elsewhere"}, "queue", "queue 'imports' on host w1 but 'elsewhere'"),
        (
            {"priority_levels": {"high": 2, "low": 1}},
            {},
            "priority_levels",
            "{'high': 2, 'low': 1} on host w1 but None on host w2",
        ),
        (
            {"priority_levels": {"high": 2, "low": 1}},
            {"priority_levels": {"high": 2, "medium": 1}},
            "priority_levels",
            "on host w1 but {'high': 2, 'medium': 1} on host w2",
        ),
        ({"broker_user": "imp"}, {}, "broker_user", "broker_user 'imp' on host w1 but None"),
        ({"broker_user": "imp"}, {"broker_user": "imp2"}, "broker_user", "but 'imp2' on host w2"),
        # The broker check has one long-wait limit per queue.
        ({"max_drain_seconds": 600}, {}, "max_drain_seconds", "600 on host w1 but None on host"),
        ({"max_drain_seconds": 600}, {"max_drain_seconds": 900}, "max_drain_seconds", "but 900"),
    ],
)
def test_a_broker_facing_key_that_differs_between_hosts_is_refused(first, later, key, shown):
    by_host = {"w1": [group("imports", **first)], "w2": [group("imports", **later)]}
    [error] = inputs.union_errors(by_host)
    assert error.startswith(f"worker_groups: group 'imports' has {key} "), error
    assert shown in error, error
    assert "on host w1" in error and "on host w2" in error
    assert "must be the same on every host that defines the group" in error
    assert "make them equal, or rename one of the groups" in error


def test_every_differing_key_and_host_is_named():
    by_host = {
        "w1": [group("jobs", queue="q1")],
        "w2": [group("jobs", queue="q2", broker_user="u")],
        "w3": [group("jobs", queue="q1")],
        "w4": [group("jobs", queue="q3")],
    }
    errors = inputs.union_errors(by_host)
    assert len(errors) == 3, errors
    assert "queue 'q1' on host w1 but 'q2' on host w2" in errors[0]
    assert "broker_user None on host w1 but 'u' on host w2" in errors[1]
    assert "queue 'q1' on host w1 but 'q3' on host w4" in errors[2]


def test_other_keys_may_differ_between_hosts():
    by_host = {
        "w1": [group("imports", weight=3, min=2, job_seconds=1, user="www-data")],
        "w2": [
            group(
                "imports",
                command="/usr/bin/other --flag",
                weight=0.5,
                min=0,
                max=1,
                job_seconds=60,
                importance=5,
                environment={"APP_ENV": "staging"},
                recycle_after=10,
                directory="/srv",
                user="brokerfleet",
            )
        ],
    }
    assert inputs.union_errors(by_host) == []


def test_defaults_spelled_out_are_the_same_group():
    by_host = {
        "w1": [group("imports")],
        "w2": [group("imports", queue="imports", broker_user=None, priority_levels=None)],
        "w3": [group("imports", queue="", broker_user="")],
    }
    assert inputs.union_errors(by_host) == []


def test_a_name_twice_on_one_host_is_left_to_that_hosts_check():
    by_host = {"w1": [group("a", queue="x"), group("a", queue="y")]}
    assert inputs.union_errors(by_host) == []
    assert inputs.group_errors(by_host["w1"])  # which refuses it


def test_group_definitions_keep_every_host_s_definition_of_a_group():
    # RabbitMQ's consumer_timeout must suit the group as every host runs it, not only the first.
    by_host = {
        "w1": [group("imports", job_seconds=3), group("thumbs")],
        "w2": None,
        "w3": [group("imports", job_seconds=600), {"command": "/bin/true"}],
    }
    assert inputs.group_definitions(by_host) == [
        group("imports", job_seconds=3),
        group("thumbs"),
        group("imports", job_seconds=600),
    ]
    own = [group("own")]
    assert inputs.group_definitions({}, own) == own
    assert inputs.group_definitions({"w1": None}) == []
    assert inputs.group_definitions({"w1": []}, own) == []


# --- groups of different hosts, as if on one ----------------------------------------------------


def test_two_names_on_one_queue_across_hosts_follow_the_one_host_rule():
    # Two groups without levels may drain one queue, on one host or on two.
    plain = {"w1": [group("a", queue="q")], "w2": [group("b", queue="q")]}
    assert inputs.union_errors(plain) == []
    assert inputs.group_errors(inputs.union_groups(plain)) == []
    levels = {
        "w1": [group("a", queue="q", priority_levels={"high": 1})],
        "w2": [group("b", queue="q.high")],
    }
    assert inputs.union_errors(levels) == [
        "worker_groups of host w2 (name 'b'): queue 'q.high' is also consumed by worker_groups "
        "of host w1 (name 'a'); only groups without priority_levels may share a queue"
    ]
    # The same rule, the same words, as for one host's list.
    [one_host] = inputs.group_errors([*levels["w1"], *levels["w2"]])
    assert one_host.endswith("only groups without priority_levels may share a queue")


def test_a_queue_that_is_another_hosts_dead_letter_queue_is_refused():
    by_host = {"w1": [group("imports")], "w2": [group("thumbs", queue="imports.dead")]}
    assert inputs.union_errors(by_host) == [
        "worker_groups of host w2 (name 'thumbs'): queue 'imports.dead' is the dead-letter "
        "queue of queue 'imports' of worker_groups of host w1 (name 'imports'); choose another "
        "queue"
    ]
    # ActiveMQ names its dead-letter queues otherwise: no clash there.
    assert inputs.union_errors(by_host, "activemq") == []
    # An unknown broker_kind is input_errors' to report: checked as RabbitMQ, no exception.
    assert len(inputs.union_errors(by_host, "kafka")) == 1


def test_one_broker_user_for_two_names_across_hosts_is_refused():
    by_host = {"w1": [group("a", broker_user="app")], "w2": [group("b", broker_user="app")]}
    assert inputs.union_errors(by_host) == [
        "worker_groups of host w2 (name 'b'): broker_user 'app' is also the broker_user of "
        "worker_groups of host w1 (name 'a'): each group's own broker user must be its alone; "
        "give one of them another broker_user"
    ]


def test_a_clash_within_one_host_is_left_to_that_hosts_check():
    clash = [group("a", queue="q", priority_levels={"high": 1}), group("b", queue="q.high")]
    users = [group("c", broker_user="app"), group("d", broker_user="app")]
    by_host = {"w1": clash + users, "w2": [group("a", queue="q", priority_levels={"high": 1})]}
    assert inputs.union_errors(by_host) == []
    # Also when the two meet on a host that is not the first to define either.
    by_host = {"w1": [clash[0], users[0]], "w2": [clash[1], users[1]], "w3": clash + users}
    assert inputs.union_errors(by_host) == []
    assert len(inputs.group_errors(by_host["w3"])) == 2
