"""The reference worker's own logic (roles/worker_fleet/files/brokerfleet_worker.py): what a
job is, and the order in which it takes deliveries from its queues."""

import collections

import pytest
from hypothesis import given
from hypothesis import strategies as st

import brokerfleet_worker as worker
from brokerfleet import queues


@pytest.mark.parametrize(
    ("body", "job"),
    [
        (b'{"id": 7, "seconds": 0.5}', (7, 0.5)),
        ('{"id": "a", "seconds": "2"}', ("a", 2.0)),
        (b'{"id": 1, "seconds": 0}', (1, 0.0)),
    ],
)
def test_a_job_is_an_id_and_seconds(body, job):
    assert worker.parse_job(body) == job


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"seconds": 1}',
        b'{"id": 1}',
        b'{"id": 1, "seconds": -1}',
        b'{"id": 1, "seconds": 86401}',
        b'{"id": 1, "seconds": "NaN"}',
        b'{"id": 1, "seconds": null}',
    ],
)
def test_anything_else_is_not_a_job(body):
    assert worker.parse_job(body) is None


def waiting_with(counts):
    return collections.defaultdict(
        collections.deque,
        {
            queue: collections.deque(f"{queue}-{n}" for n in range(count))
            for queue, count in counts.items()
        },
    )


def test_the_poller_follows_the_weighted_cycle_and_skips_empty_queues():
    order = queues.poll_order({"high": 2, "low": 1})  # high, low, high
    poller = worker.Poller([f"jobs.{level}" for level in order], ["jobs.idle"])
    waiting = waiting_with({"jobs.high": 3, "jobs.low": 3, "jobs.idle": 1})
    taken = [poller.next(waiting) for _ in range(8)]
    assert taken == [
        "jobs.high-0",
        "jobs.low-0",
        "jobs.high-1",
        "jobs.high-2",
        "jobs.low-1",
        "jobs.low-2",  # high is empty: low's turns come round without waiting for it
        "jobs.idle-0",  # only when every weighted queue is empty
        None,
    ]


@given(st.dictionaries(st.sampled_from(queues.PRIORITY_LEVELS), st.integers(1, 5), min_size=1))
def test_while_every_level_has_work_each_gets_its_weight_in_turns(weights):
    order = queues.poll_order(weights)
    poller = worker.Poller(order, [])
    waiting = waiting_with({level: len(order) for level in weights})
    taken = [poller.next(waiting).rsplit("-", 1)[0] for _ in range(len(order))]
    assert collections.Counter(taken) == collections.Counter(order)


def test_an_unknown_broker_kind_stops_the_worker():
    with pytest.raises(SystemExit, match="BROKER_KIND must be rabbitmq or activemq"):
        worker.connect({"BROKER_KIND": "kafka"})
