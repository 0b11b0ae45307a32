"""Unit and property tests for plugins/module_utils/sizing.py."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brokerfleet import queues, sizing


def group(name, **keys):
    return {"name": name, "command": "/bin/true", **keys}


# group_errors and the other input rules: tests/unit/test_inputs.py.


# --- host_cpus and worker_budget ---------------------------------------------------------------


def test_host_cpus_prefers_override_then_nproc_then_vcpus():
    assert sizing.host_cpus(nproc=4, vcpus=8, override=2) == 2
    assert sizing.host_cpus(nproc=4, vcpus=8) == 4
    assert sizing.host_cpus(nproc=None, vcpus=8) == 8
    with pytest.raises(ValueError, match="fleet_cpus"):
        sizing.host_cpus()
    with pytest.raises(ValueError, match="fleet_cpus must be an integer >= 1, got -2"):
        sizing.host_cpus(override=-2)
    # 0 is refused, not taken for unset; -e gives strings.
    with pytest.raises(ValueError, match="fleet_cpus must be an integer >= 1, got 0"):
        sizing.host_cpus(nproc=4, override=0)
    assert sizing.host_cpus(nproc=4, override="8") == 8
    with pytest.raises(ValueError, match="fleet_cpus must be an integer >= 1, got 'eight'"):
        sizing.host_cpus(nproc=4, override="eight")


def test_budget_is_cpu_bound_on_a_roomy_host():
    assert sizing.worker_budget(4, 2, memory_mb=24000, worker_memory_mb=128, reserve_mb=1024) == 8


def test_budget_is_capped_by_memory():
    # 2048 - 1024 reserve leaves 1024 MB: 4 workers of 256 MB, whatever the CPUs allow.
    assert sizing.worker_budget(16, 4, memory_mb=2048, worker_memory_mb=256, reserve_mb=1024) == 4
    assert sizing.worker_budget(16, 4, memory_mb=512, worker_memory_mb=256, reserve_mb=1024) == 0


def test_budget_rejects_nonsense_knobs():
    with pytest.raises(ValueError, match="workers_per_cpu"):
        sizing.worker_budget(4, 0, 1000, 100)
    with pytest.raises(ValueError, match="worker_memory_mb"):
        sizing.worker_budget(4, 1, 1000, 0)


# --- split_budget ------------------------------------------------------------------------------


def test_split_follows_weights():
    counts = sizing.split_budget(12, [group("a", weight=2, min=0), group("b", weight=1, min=0)])
    assert counts == {"a": 8, "b": 4}


def test_split_respects_max_and_leaves_the_rest_unused():
    counts = sizing.split_budget(10, [group("a", max=2), group("b", max=3)])
    assert counts == {"a": 2, "b": 3}


def test_split_gives_every_group_its_min_first():
    counts = sizing.split_budget(4, [group("big", weight=100, min=0), group("small", min=3)])
    assert counts == {"big": 1, "small": 3}


def test_split_refuses_mins_over_budget_naming_the_groups():
    with pytest.raises(ValueError, match=r"ask for 5 processes at their min \(a=2, b=3\).*is 4"):
        sizing.split_budget(4, [group("a", min=2), group("b", min=3)])


groups_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "weight": st.integers(1, 20) | st.floats(0.1, 20),
            "min": st.integers(0, 5),
            "extra": st.none() | st.integers(0, 10),
        }
    ),
    min_size=1,
    max_size=8,
).map(
    lambda specs: [
        group(
            f"g{i}",
            weight=s["weight"],
            min=s["min"],
            max=None if s["extra"] is None else s["min"] + s["extra"],
        )
        for i, s in enumerate(specs)
    ]
)


@given(groups=groups_strategy, spare=st.integers(0, 200))
def test_split_totals_and_bounds_hold(groups, spare):
    budget = sum(g["min"] for g in groups) + spare
    counts = sizing.split_budget(budget, groups)
    capacity = sum(g["max"] if g["max"] is not None else budget for g in groups)
    assert sum(counts.values()) == min(budget, capacity)
    for g in groups:
        assert g["min"] <= counts[g["name"]]
        assert g["max"] is None or counts[g["name"]] <= g["max"]


@given(groups=groups_strategy, spare=st.integers(0, 200))
def test_heavier_group_never_gets_fewer_than_a_lighter_one_with_the_same_bounds(groups, spare):
    budget = sum(g["min"] for g in groups) + spare
    counts = sizing.split_budget(budget, groups)
    for a in groups:
        for b in groups:
            same_bounds = (a["min"], a["max"]) == (b["min"], b["max"])
            if same_bounds and a["weight"] > b["weight"]:
                assert counts[a["name"]] >= counts[b["name"]]


@given(groups=groups_strategy, spare=st.integers(0, 200), factor=st.integers(2, 5))
def test_raising_a_weight_never_takes_processes_from_that_group(groups, spare, factor):
    budget = sum(g["min"] for g in groups) + spare
    before = sizing.split_budget(budget, groups)
    heavier = [dict(groups[0], weight=groups[0]["weight"] * factor), *groups[1:]]
    assert sizing.split_budget(budget, heavier)["g0"] >= before["g0"]


# --- prefetch, stop wait, watermark, plan ------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "prefetch"),
    [(3600, 1), (1, 1), (0.3, 1), (0.1, 1), (0.05, 2), (0.02, 5), (0.01, 10), (0.001, 100)],
)
def test_prefetch_is_one_for_slow_jobs_and_a_tenth_of_a_second_of_work_for_fast_ones(
    seconds, prefetch
):
    assert sizing.prefetch_for(seconds) == prefetch


@pytest.mark.parametrize(
    ("keys", "longest"),
    [
        ({}, 60),  # job_seconds 5
        ({"job_seconds": 0.01}, 60),
        ({"job_seconds": 6}, 60),
        ({"job_seconds": 20}, 200),
        ({"job_seconds": 7.3}, 73),  # to the millisecond: not 72.99999999999999
        ({"job_seconds": 20000}, 86400),  # at most a day, like job_seconds
        ({"job_seconds": 86400}, 86400),
        ({"job_seconds": 20, "max_job_seconds": 900}, 900),
        ({"job_seconds": 20, "max_job_seconds": 20}, 20),
    ],
)
def test_max_job_seconds_is_the_group_s_or_ten_typical_jobs_and_at_least_a_minute(keys, longest):
    assert sizing.max_job_seconds(group("a", **keys)) == longest


def test_stop_wait_outlasts_the_longest_allowed_job():
    assert sizing.stop_wait_seconds(60) == 70
    assert sizing.stop_wait_seconds(90.2) == 101
    assert sizing.stop_wait_seconds(86400) == 86410


@given(seconds=st.floats(min_value=0.001, max_value=86400))
def test_the_derived_allowance_holds_the_job_and_the_stop_wait_never_shrinks(seconds):
    longest = sizing.max_job_seconds(group("a", job_seconds=seconds))
    assert seconds <= longest <= 86400
    stop = sizing.stop_wait_seconds(longest)
    assert stop >= longest + 10
    # Never shorter than the stop timeout before max_job_seconds (2 x job_seconds + 10), but
    # for jobs of more than half a day: none may run for more than a day.
    assert stop >= min(math.ceil(2 * seconds), 86400) + 10


# --- RabbitMQ's consumer_timeout ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("groups", "timeout_ms"),
    [
        ([], 1_800_000),
        ([group("a")], 1_800_000),  # 60 s jobs at most: RabbitMQ's default stays
        ([group("a"), group("b", job_seconds=600)], 12_000_000),  # 6000 s, twice
        ([group("b", max_job_seconds=900.0004)], 1_801_000),  # whole seconds, rounded up
        # Prefetch 10: the tenth message held waits for nine jobs of up to 600 s, then runs.
        ([group("fast", job_seconds=0.01, max_job_seconds=600)], 12_000_000),
        # One message held per level queue (prefetch 1), three levels.
        (
            [group("p", max_job_seconds=1000, priority_levels={"high": 2, "medium": 1, "low": 0})],
            6_000_000,
        ),
    ],
)
def test_consumer_timeout_outlasts_the_longest_wait_for_an_ack(groups, timeout_ms):
    assert sizing.consumer_timeout_ms(groups) == timeout_ms


@given(
    groups=st.lists(
        st.fixed_dictionaries(
            {"job_seconds": st.floats(min_value=0.001, max_value=86400)},
            optional={"levels": st.integers(1, 5)},
        ),
        max_size=4,
    )
)
def test_consumer_timeout_never_falls_below_a_group_s_allowance_nor_the_default(groups):
    groups = [
        group(
            f"g{i}",
            job_seconds=g["job_seconds"],
            priority_levels=dict.fromkeys(queues.PRIORITY_LEVELS[: g.get("levels", 0)], 1) or None,
        )
        for i, g in enumerate(groups)
    ]
    timeout_ms = sizing.consumer_timeout_ms(groups)
    assert isinstance(timeout_ms, int) and timeout_ms >= 1_800_000
    for g in groups:
        held = sizing.group_prefetch(g) * len(queues.consumed_queues(g))
        assert timeout_ms >= 2000 * held * sizing.max_job_seconds(g)
    # Adding a group never lowers it.
    assert sizing.consumer_timeout_ms([*groups, group("extra")]) >= timeout_ms


def test_watermark_is_relative_without_a_limit_and_disk_limit_covers_it():
    mark = sizing.memory_watermark(24000)
    assert mark == {"relative": 0.4, "absolute_mb": None, "disk_free_limit_mb": 9600}


def test_watermark_is_absolute_with_a_limit():
    mark = sizing.memory_watermark(24000, broker_memory_mb=4096, fraction=0.5)
    assert mark == {"relative": None, "absolute_mb": 2048, "disk_free_limit_mb": 2048}


def test_watermark_refuses_a_limit_above_ram_and_odd_fractions():
    with pytest.raises(ValueError, match="rabbitmq_memory_limit_mb"):
        sizing.memory_watermark(1000, broker_memory_mb=2000)
    with pytest.raises(ValueError, match="rabbitmq_memory_fraction"):
        sizing.memory_watermark(1000, fraction=0.95)
    with pytest.raises(ValueError, match="rabbitmq_memory_fraction must be a number within"):
        sizing.memory_watermark(1000, fraction="lots")


def test_watermark_takes_numeric_strings_as_extra_vars_give_them():
    # -e rabbitmq_memory_fraction=0.35 used to fail with a TypeError.
    assert sizing.memory_watermark(24000, fraction="0.35")["relative"] == 0.35
    mark = sizing.memory_watermark(24000, broker_memory_mb="4096", fraction="0.5")
    assert mark["absolute_mb"] == 2048


def test_budget_takes_numeric_strings_as_extra_vars_give_them():
    assert sizing.worker_budget(4, "1.5", 24000, "128", reserve_mb=1024) == 6
    with pytest.raises(ValueError, match="workers_per_cpu must be a number > 0, got 'nan'"):
        sizing.worker_budget(4, "nan", 24000, 128)


def test_plan_fills_defaults_and_derives_per_group_numbers():
    plan = sizing.fleet_plan(
        [group("pocket", weight=3, job_seconds=30), group("chrome", job_seconds=0.02)], budget=8
    )
    pocket, chrome = plan
    assert pocket["queue"] == "pocket" and pocket["importance"] == 3
    assert (pocket["processes"], pocket["prefetch"]) == (6, 1)
    assert (pocket["max_job_seconds"], pocket["stopwaitsecs"]) == (300, 310)
    assert (chrome["processes"], chrome["prefetch"]) == (2, 5)
    assert (chrome["max_job_seconds"], chrome["stopwaitsecs"]) == (60, 70)


def test_plan_refuses_invalid_groups_with_every_error():
    with pytest.raises(ValueError, match=r"weight must be.*; .*max \(1\) must be >= min \(2\)"):
        sizing.fleet_plan([group("a", weight=0), group("b", min=2, max=1)], budget=8)


# --- what each worker gets --------------------------------------------------------------------

BROKER = {
    "host": "mq1",
    "user": "app/user",
    "password": "p@ss:w/rd&x",
    "vhost": "/",
    "port": 5672,
    "openwire_port": 61616,
    "stomp_port": 61613,
}


def test_rabbitmq_workers_get_an_encoded_amqp_url_and_their_poll_order():
    [plan] = sizing.fleet_plan([group("jobs", priority_levels={"high": 2, "low": 1})], 2)
    environment = sizing.worker_environment(plan, {**BROKER, "kind": "rabbitmq"})
    assert environment["BROKER_URL"] == "amqp://app%2Fuser:p%40ss%3Aw%2Frd%26x@mq1:5672/%2F"
    assert environment["FLEET_POLL_ORDER"] == "jobs.high,jobs.low,jobs.high"
    assert environment["BROKER_PREFETCH"] == "1" and "WORKER_PROCESS" not in environment
    assert environment["WORKER_MAX_JOB_SECONDS"] == "60"
    assert "BROKER_STOMP_URL" not in environment


def test_activemq_workers_get_openwire_and_stomp_urls_carrying_the_prefetch():
    slow, fast = sizing.fleet_plan(
        [group("slow", job_seconds=30), group("fast", job_seconds=0.01)],
        4,
    )
    broker = {**BROKER, "kind": "activemq"}
    # Preflight refuses a group that sets a key of the bundle's (fleet_plan too); should one
    # get through, the bundle's keys win over the group's own environment.
    slow["environment"] = {"BROKER_URL": "mine"}
    environment = sizing.worker_environment(slow, broker)
    assert environment["BROKER_URL"] == (
        "tcp://mq1:61616?jms.prefetchPolicy.all=0&jms.userName=app%2Fuser&jms.password=p%40ss%3Aw%2Frd%26x"
    )
    assert environment["BROKER_STOMP_URL"].endswith("@mq1:61613?activemq.prefetchSize=1")
    fast_environment = sizing.worker_environment(fast, broker)
    assert "jms.prefetchPolicy.all=10&" in fast_environment["BROKER_URL"]
    assert fast_environment["BROKER_STOMP_URL"].endswith("activemq.prefetchSize=10")


def test_autoscale_renders_spare_slots_up_to_max_or_the_budget():
    groups = [group("imports", weight=3), group("thumbnails", max=3), group("digest", max=1)]
    plan = sizing.fleet_plan(groups, 8, autoscale=True)
    assert {g["name"]: (g["processes"], len(g["programs"])) for g in plan} == {
        "imports": (6, 8),
        "thumbnails": (1, 3),
        "digest": (1, 1),
    }
    assert [len(g["programs"]) for g in sizing.fleet_plan(groups, 8)] == [6, 1, 1]  # off: no spares
