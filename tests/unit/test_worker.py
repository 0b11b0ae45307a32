"""The reference worker's own logic (roles/worker_fleet/files/brokerfleet_worker.py): what a
job is, the order in which it takes deliveries from its queues, how it and its publish and move
commands get over a lost broker connection, and where move finds dead-lettered jobs."""

import collections
import itertools
import json
import os
import random
import re
import signal
import sys
import threading
import time
import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

import brokerfleet_worker as worker
from brokerfleet import queues


@pytest.mark.parametrize(
    ("body", "job"),
    [
        (b'{"id": 7, "seconds": 0.5}', (7, 0.5, 0.0)),
        ('{"id": "a", "seconds": "2"}', ("a", 2.0, 0.0)),
        (b'{"id": 1, "seconds": 0}', (1, 0.0, 0.0)),
        (b'{"id": 2, "seconds": 0.3, "cpu_seconds": 0.1}', (2, 0.3, 0.1)),
    ],
)
def test_a_job_is_an_id_seconds_and_cpu_seconds(body, job):
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
        b'{"id": 1, "seconds": 0.1, "cpu_seconds": 0.2}',
        b'{"id": 1, "seconds": 1, "cpu_seconds": -1}',
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


@pytest.mark.parametrize(
    ("first", "cap", "ceilings"),
    [(1, 30, [1, 2, 4, 8, 16, 30, 30, 30]), (0.5, 3, [0.5, 1, 2, 3, 3])],
)
def test_the_backoff_doubles_up_to_its_cap(first, cap, ceilings):
    delays = worker.backoff_delays(first, cap, rand=lambda: 1.0)
    assert [next(delays) for _ in ceilings] == ceilings


@given(
    st.floats(0.01, 10),
    st.floats(10, 100),
    st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=30),
)
def test_the_jitter_stays_between_nothing_and_the_capped_delay(first, cap, randoms):
    delays = worker.backoff_delays(first, cap, rand=iter(randoms).__next__)
    for attempt, rand in enumerate(randoms):
        ceiling = min(cap, first * 2**attempt)
        delay = next(delays)
        assert 0 <= delay <= ceiling
        assert delay == pytest.approx(rand * ceiling)


def test_only_the_errors_that_mean_a_lost_connection_become_connection_lost():
    with pytest.raises(worker.ConnectionLost) as lost, worker.connection_lost_on((OSError,)):
        raise ConnectionResetError(104, "Connection reset by peer")
    assert isinstance(lost.value.__cause__, ConnectionResetError)
    with pytest.raises(KeyError), worker.connection_lost_on((OSError,)):
        raise KeyError("a bug stays a bug")


class FakeBroker:
    """A broker connection for the consume loop: `bodies` arrive on the queue when it
    subscribes; the call named by `lose_on` ("wait" or "ack") loses the connection."""

    def __init__(self, name, bodies, lose_on=None):
        self.name, self.bodies, self.lose_on = name, bodies, lose_on
        self.waiting = collections.defaultdict(collections.deque)
        self.subscriptions, self.acked, self.rejected, self.closed = [], [], [], False
        self.when_idle = self.never_idle

    def never_idle(self):
        raise AssertionError(f"{self.name}: idle on a connection that should be lost by now")

    def subscribe(self, queues, prefetch):
        self.subscriptions.append((queues, prefetch))
        for n, body in enumerate(self.bodies):
            self.waiting[queues[0]].append(worker.Delivery(queues[0], body, (self.name, n)))

    def wait(self, seconds):
        if self.lose_on == "wait":
            raise worker.ConnectionLost("connection reset")
        self.when_idle()

    def settle(self, queue, seconds):
        pass

    def work(self, seconds):
        pass

    def ack(self, delivery):
        if self.lose_on == "ack":
            raise worker.ConnectionLost("connection reset")
        assert delivery.token[0] == self.name, "acked a token of another connection"
        self.acked.append(delivery.token)

    def reject(self, delivery):
        self.rejected.append(delivery.token)

    def close(self):
        self.closed = True


def job(job_id, seconds=0):
    return f'{{"id": {job_id}, "seconds": {seconds}}}'.encode()


def connections(*outcomes):
    """A connect() that returns (or raises) the next outcome at each call."""
    outcomes = iter(outcomes)

    def connect():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return connect


def run(connect, last, rand=None, max_job_seconds=None):
    """Run the consume loop until `last` (the final connection) has nothing left to do, and
    return what it slept."""
    stopping, slept = [], []
    last.when_idle = lambda: stopping.append(True)
    queues = ["jobs.high", "jobs.low"]
    poller = worker.Poller(queues, [])
    worker.consume_jobs(
        connect,
        queues,
        3,
        poller,
        stopping,
        max_job_seconds=max_job_seconds,
        sleep=slept.append,
        rand=rand or random.random,
    )
    return slept


def done_ids(done_dir):
    return [int(line.split()[0]) for line in (done_dir / "jobs.high.log").read_text().splitlines()]


@pytest.fixture
def done_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(worker, "DONE_DIR", str(tmp_path))
    return tmp_path


def test_a_job_whose_ack_is_lost_is_done_again_on_a_new_connection(done_dir, capsys):
    # Jobs 1 and 2 wait in the first connection; the broker redelivers both to the second.
    first = FakeBroker("first", [job(1), job(2)], lose_on="ack")
    second = FakeBroker("second", [job(1), job(2), job(3)])
    slept = run(connections(first, second), last=second, rand=lambda: 0.5)

    log = capsys.readouterr().out
    assert "job 1 done but its ack was lost: the broker will redeliver it" in log
    assert done_ids(done_dir) == [1, 1, 2, 3]  # job 2 of the dead connection is never started
    assert first.acked == [] and first.closed
    assert second.acked == [("second", 0), ("second", 1), ("second", 2)]
    assert second.subscriptions == first.subscriptions == [(["jobs.high", "jobs.low"], 3)]
    assert slept == [0.25, 0.25]  # half the first delay (1 s), in steps of a quarter second


def test_a_connection_lost_while_idle_or_refused_is_opened_again(done_dir, capsys):
    idle = FakeBroker("idle", [], lose_on="wait")
    last = FakeBroker("last", [job(7)])
    refused = worker.ConnectionLost("connection refused")
    run(connections(refused, refused, idle, refused, last), last)

    assert last.subscriptions == idle.subscriptions == [(["jobs.high", "jobs.low"], 3)]
    assert last.acked == [("last", 0)] and done_ids(done_dir) == [7]
    assert idle.closed
    log = capsys.readouterr().out
    assert log.count("no broker connection") == 4
    assert log.count("consuming jobs.high, jobs.low with prefetch 3") == 2


def test_the_backoff_starts_short_again_once_connected(done_dir, capsys):
    refused = worker.ConnectionLost("connection refused")
    idle = FakeBroker("idle", [], lose_on="wait")
    last = FakeBroker("last", [])
    run(connections(refused, refused, refused, idle, last), last, rand=lambda: 1.0)

    # With rand() = 1 every delay is its ceiling.
    waits = re.findall(r"connecting again in (\S+) s", capsys.readouterr().out)
    assert waits == ["1.0", "2.0", "4.0", "1.0"]


def test_a_job_longer_than_the_allowance_is_dead_lettered_not_started(done_dir, capsys):
    broker = FakeBroker("only", [job(1, 30), job(2, 90.5), job(3, 60), b"not json"])
    run(connections(broker), last=broker, max_job_seconds=60)

    assert done_ids(done_dir) == [1, 3]  # a job of exactly the allowance runs
    assert broker.acked == [("only", 0), ("only", 2)]
    assert broker.rejected == [("only", 1), ("only", 3)]  # requeue=False: to <queue>.dead
    log = capsys.readouterr().out
    assert "rejecting job 2 of 90.5 s: longer than the group's max_job_seconds (60 s)" in log


def test_a_job_computes_its_cpu_seconds_then_waits_the_rest(done_dir):
    waited = []
    broker = FakeBroker("only", [b'{"id": 1, "seconds": 0.5, "cpu_seconds": 0.2}'])
    broker.work = waited.append
    started = time.process_time()
    run(connections(broker), last=broker)
    assert time.process_time() - started >= 0.2
    assert waited == [pytest.approx(0.3)]
    assert done_ids(done_dir) == [1]


def test_without_an_allowance_any_job_up_to_a_day_runs(done_dir):
    broker = FakeBroker("only", [job(1, 86400)])
    run(connections(broker), last=broker)
    assert done_ids(done_dir) == [1] and broker.rejected == []


@pytest.mark.parametrize(
    ("environment", "allowance"),
    [
        ({}, None),
        ({"WORKER_MAX_JOB_SECONDS": ""}, None),
        ({"WORKER_MAX_JOB_SECONDS": "73.5"}, 73.5),
    ],
)
def test_the_allowance_comes_from_the_environment(environment, allowance):
    assert worker.job_allowance(environment) == allowance


def test_sigterm_during_the_backoff_ends_the_loop():
    stopping = []
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        stopping.append(True)  # SIGTERM arrives during the first step of the wait

    attempts = []

    def connect():
        attempts.append(1)
        raise worker.ConnectionLost("connection refused")

    worker.consume_jobs(
        connect, ["jobs"], 1, worker.Poller(["jobs"], []), stopping, sleep=sleep, rand=lambda: 1.0
    )
    assert len(attempts) == 1
    assert slept == [0.25]


def test_a_real_sigterm_cuts_a_long_pause_short():
    stopping = []
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        started = time.monotonic()
        timer.start()
        worker.pause(30, stopping)
        assert stopping and time.monotonic() - started < 1
    finally:
        timer.cancel()
        timer.join()  # no SIGTERM may come once the default handler is back
        signal.signal(signal.SIGTERM, previous)


def bare_stomp_broker():
    """A StompBroker without stomp.py (not installed here) and without a connection."""
    broker = object.__new__(worker.StompBroker)
    broker.arrived = threading.Condition()
    broker.waiting = collections.defaultdict(collections.deque)
    broker.receipts, broker.sent = set(), itertools.count()
    broker.closing = broker.disconnected = False
    broker.lost_errors = (OSError,)
    return broker


def test_a_stomp_disconnection_is_noticed_by_the_main_thread_not_the_end_of_the_process():
    # The receiver-thread side of StompBroker.
    broker = bare_stomp_broker()
    receiver = threading.Timer(0.1, broker.on_disconnected)
    receiver.start()
    started = time.monotonic()
    with pytest.raises(worker.ConnectionLost):
        broker.wait(5)
    assert time.monotonic() - started < 1  # woken by the disconnection, not the timeout
    receiver.join()
    with pytest.raises(worker.ConnectionLost):
        broker.settle("jobs", 5)
    with pytest.raises(worker.ConnectionLost):
        broker.ack(worker.Delivery("jobs", b"{}", ("ID:1", "0")))


# --- endpoints: every node of a cluster ---------------------------------------------------------


def test_each_process_takes_the_nodes_in_its_own_order_and_fails_over_round_robin(monkeypatch):
    opened = []
    monkeypatch.setattr(worker, "connect", lambda environment, url: opened.append(url) or url)
    environment = {
        "BROKER_KIND": "rabbitmq",
        "BROKER_URL": "amqp://a",
        "BROKER_URLS": "amqp://a,amqp://b,amqp://c",
    }
    endpoints = worker.Endpoints(environment, rand=random.Random(7))
    assert sorted(endpoints.urls) == ["amqp://a", "amqp://b", "amqp://c"]
    for _ in range(4):
        endpoints.connect()
    assert opened == endpoints.urls + endpoints.urls[:1]
    orders = {
        tuple(worker.Endpoints(environment, rand=random.Random(seed)).urls) for seed in range(20)
    }
    assert len(orders) > 1  # processes spread over the nodes


def test_without_broker_urls_or_on_activemq_there_is_one_endpoint():
    assert worker.Endpoints({"BROKER_KIND": "rabbitmq", "BROKER_URL": "amqp://a"}).urls == [
        "amqp://a"
    ]
    activemq = {
        "BROKER_KIND": "activemq",
        "BROKER_URL": "tcp://a",
        "BROKER_URLS": "tcp://a",
        "BROKER_STOMP_URL": "stomp://a",
    }
    assert worker.Endpoints(activemq).urls == ["stomp://a"]


def test_publish_takes_the_next_node_at_each_attempt_until_its_time_is_up(monkeypatch):
    tried = []

    def refuse(environment, url):
        tried.append(url)
        raise worker.ConnectionLost("refused")

    monkeypatch.setattr(worker, "connect", refuse)
    environment = {
        "BROKER_KIND": "rabbitmq",
        "BROKER_URL": "amqp://a",
        "BROKER_URLS": "amqp://a,amqp://b",
        "BROKER_QUEUE": "jobs",
    }
    clock = FakeClock()
    reconnects = worker.Reconnects(
        worker.Endpoints(environment).connect, 3, clock.sleep, lambda: 1.0, clock.now
    )
    with pytest.raises(SystemExit, match="giving up, 0 of 2 confirmed"):
        worker.publish(publishing(count=2), environment, reconnects)
    assert clock.slept == [1, 2]  # attempts at 0, 1 and 3 s
    assert tried[0] != tried[1] and tried[2] == tried[0]
    assert sorted(tried[:2]) == ["amqp://a", "amqp://b"]


# --- publish and move: bounded retries ----------------------------------------------------------


class FakeClock:
    """time.monotonic and time.sleep for Reconnects: sleeping moves the clock on."""

    def __init__(self):
        self.time, self.slept = 0.0, []

    def now(self):
        return self.time

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.time += seconds


def publishing(count, first_id=1, level=None, seconds=0.1):
    return types.SimpleNamespace(
        level=level, first_id=first_id, count=count, seconds=seconds, retry_seconds=300
    )


class Publisher:
    """A broker connection for publish: the broker stores each message sent into `stored`
    (job ids, shared by every connection) and confirms it, up to `confirms` messages; the
    connection is lost before the next one's confirm comes back."""

    def __init__(self, stored, confirms=None):
        self.stored, self.confirms, self.closed = stored, confirms, False

    def publish(self, queue, bodies, confirmed):
        for sent, body in enumerate(bodies):
            self.stored.append(json.loads(body)["id"])
            if sent == self.confirms:
                raise worker.ConnectionLost("connection reset")
            confirmed(1)

    def close(self):
        self.closed = True


PLAIN = {"BROKER_KIND": "rabbitmq", "BROKER_QUEUE": "jobs", "FLEET_POLL_ORDER": "jobs"}


def test_a_lost_connection_resends_from_the_first_unconfirmed_message(capsys):
    stored = []
    first, last = Publisher(stored, confirms=2), Publisher(stored)
    refused = worker.ConnectionLost("connection refused")
    clock = FakeClock()
    reconnects = worker.Reconnects(
        connections(first, refused, last), 300, clock.sleep, lambda: 0.5, clock.now
    )
    worker.publish(publishing(count=5), PLAIN, reconnects)

    # Job 3 reached the queue but its confirm was lost: it is sent again (at-least-once).
    assert stored == [1, 2, 3, 3, 4, 5]
    assert first.closed and last.closed
    assert clock.slept == [0.5, 1.0]  # backoff_delays with rand() = 0.5
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "[worker] no broker connection (connection reset): connecting again in 0.5 s, "
        "2 of 5 confirmed",
        "[worker] no broker connection (connection refused): connecting again in 1.0 s, "
        "2 of 5 confirmed",
    ]
    assert out == "published 5 jobs of 0.1 s to jobs\n"


def test_the_retries_end_once_the_broker_was_away_their_time_in_all():
    stored = []
    refused = worker.ConnectionLost("connection refused")
    clock = FakeClock()
    reconnects = worker.Reconnects(
        connections(refused, Publisher(stored, confirms=1), *[refused] * 5),
        10,
        clock.sleep,
        lambda: 1.0,
        clock.now,
    )
    with pytest.raises(SystemExit) as stopped:
        worker.publish(publishing(count=5), PLAIN, reconnects)

    # Away 1 s before job 1 went through, which starts the backoff short again; then 9 s more,
    # the last wait cut to what is left of the 10 s.
    assert clock.slept == [1, 1, 2, 4, 2]
    assert stored == [1, 2]
    assert stopped.value.code == (
        "no broker connection (connection refused) for 10 s in all (--retry-seconds): "
        "giving up, 1 of 5 confirmed"
    )  # a message: exit status 1


def test_an_amqp_publish_under_a_dropped_connection_is_a_connection_lost(monkeypatch):
    pika = fake_pika([])
    monkeypatch.setitem(sys.modules, "pika", pika)
    broker = worker.AmqpBroker("amqp://mq")
    published = []

    def basic_publish(exchange, queue, body, properties, mandatory):
        if len(published) == 2:
            raise pika.exceptions.AMQPConnectionError("stream lost")
        published.append(body)  # confirmed: with confirms on, basic_publish waits for it

    broker.channel.basic_publish = basic_publish
    confirmed = []
    with pytest.raises(worker.ConnectionLost, match="stream lost"):
        broker.publish("jobs", [job(n) for n in range(1, 6)], confirmed.append)
    assert confirmed == [1, 1]


def test_a_stomp_batch_is_confirmed_only_once_its_receipt_is_back(monkeypatch):
    monkeypatch.setattr(worker, "PUBLISH_BATCH", 2)
    broker = bare_stomp_broker()
    sent = []

    def send(destination, body, content_type, headers):
        sent.append(body)
        if len(sent) < 4:
            broker.on_receipt(types.SimpleNamespace(headers={"receipt-id": headers["receipt"]}))
        else:
            broker.on_disconnected()  # frame 4's receipt is lost with the connection

    broker.connection = types.SimpleNamespace(send=send)
    confirmed = []
    with pytest.raises(worker.ConnectionLost):
        broker.publish("jobs", [job(n) for n in range(1, 6)], confirmed.append)
    assert confirmed == [2]  # frames 1 and 2; frame 3's receipt alone confirms no batch
    assert len(sent) == 4


class StompDisconnect:
    """What close() needs of stomp.py: a connection, its transport, and the protocol's
    disconnect, which sends a DISCONNECT with a receipt and records it in ``events``. The
    broker answers after ``answer_after`` seconds (from its receiver thread), or never."""

    def __init__(self, broker, answer_after=None):
        self.broker, self.answer_after, self.events = broker, answer_after, []
        self.connected = True
        self.transport = types.SimpleNamespace(disconnect_socket=self.disconnect_socket)
        broker.connection = self
        broker.stomp = types.SimpleNamespace(
            protocol=types.SimpleNamespace(
                Protocol11=types.SimpleNamespace(disconnect=self.disconnect)
            )
        )

    def is_connected(self):
        return self.connected

    def disconnect(self, connection, receipt):
        assert connection is self
        self.events.append(("DISCONNECT", receipt))
        if self.answer_after is not None:
            threading.Timer(self.answer_after, self.receipt, [receipt]).start()

    def receipt(self, receipt):
        self.events.append(("RECEIPT", receipt))
        self.broker.on_receipt(types.SimpleNamespace(headers={"receipt-id": receipt}))

    def disconnect_socket(self):
        self.events.append("socket closed")
        self.connected = False


def test_a_stomp_close_waits_until_the_broker_confirms_its_disconnect():
    # The acks sent before the DISCONNECT are taken once its receipt is back: close() returns
    # only then, and leaves the socket to stomp.py, which closes it on that receipt.
    broker = bare_stomp_broker()
    stomp = StompDisconnect(broker, answer_after=0.2)
    broker.close()
    stomp.events.append("closed")
    (command, receipt), *rest = stomp.events
    assert command == "DISCONNECT" and receipt
    assert rest == [("RECEIPT", receipt), "closed"]


def test_a_stomp_close_without_a_receipt_gives_up_after_its_bound_and_closes_the_socket(
    monkeypatch, capsys
):
    monkeypatch.setattr(worker, "DISCONNECT_SECONDS", 0.2)
    broker = bare_stomp_broker()
    stomp = StompDisconnect(broker)  # the broker never answers
    started = time.monotonic()
    broker.close()
    assert 0.2 <= time.monotonic() - started < 1
    assert stomp.events[0][0] == "DISCONNECT" and stomp.events[1:] == ["socket closed"]
    assert "did not confirm the disconnect within 0.2 s" in capsys.readouterr().out


@pytest.mark.parametrize("gone", ["noticed", "socket"])
def test_a_stomp_close_on_a_lost_connection_sends_nothing_and_waits_for_nothing(gone):
    broker = bare_stomp_broker()
    stomp = StompDisconnect(broker, answer_after=0)
    if gone == "noticed":
        broker.on_disconnected()
    else:
        stomp.connected = False
    started = time.monotonic()
    broker.close()
    assert time.monotonic() - started < 0.1
    assert stomp.events == []


PRIORITY = {
    "BROKER_QUEUE": "jobs",
    "FLEET_POLL_ORDER": "jobs.high,jobs.low,jobs.high",
    "FLEET_POLL_WHEN_IDLE": "jobs.very_low",
}


@pytest.mark.parametrize("kind", ["rabbitmq", "activemq"])
def test_move_from_dead_takes_the_dead_letter_queues_of_the_group(kind):
    plain = {"BROKER_KIND": kind, "BROKER_QUEUE": "jobs", "FLEET_POLL_ORDER": "jobs"}
    levels = {"BROKER_KIND": kind, **PRIORITY}
    dead = {
        queue: queues.dead_letter_queue(queue, kind)  # as the broker roles name them
        for queue in ("jobs", "jobs.high", "jobs.low", "jobs.very_low")
    }
    assert worker.move_queues(plain, "dead", None) == ([dead["jobs"]], "jobs")
    assert worker.move_queues(levels, "dead", "low") == (
        [dead["jobs.high"], dead["jobs.low"], dead["jobs.very_low"]],
        "jobs.low",
    )
    assert worker.move_queues(levels, "low", "high") == (["jobs.low"], "jobs.high")
    with pytest.raises(SystemExit, match="priority levels: give --to, one of high, low, very_low"):
        worker.move_queues(levels, "dead", None)
    with pytest.raises(SystemExit, match="consumes jobs.high, jobs.low, jobs.very_low, not jobs.x"):
        worker.move_queues(levels, "dead", "x")


def test_the_dead_letter_queue_names_are_the_broker_roles_ones():
    assert worker.dead_letter_queue({"BROKER_KIND": "rabbitmq"}, "jobs") == "jobs.dead"
    assert (
        worker.dead_letter_queue({"BROKER_KIND": "activemq"}, "jobs") == "ActiveMQ.DLQ.Queue.jobs"
    )


def test_move_needs_to_unless_from_dead():
    with pytest.raises(SystemExit) as refused:
        worker.main(["move", "--group", "jobs", "--from", "low"])
    assert refused.value.code == 2  # argparse's usage error, before the group is read


class Mover:
    """A broker connection for move over `store` (queue name: list of bodies; the broker,
    shared by every connection): subscribing delivers what waits in the queues; publish
    appends, an ack takes the message off its queue; the `lose_on_ack`-th ack loses the
    connection."""

    def __init__(self, store, lose_on_ack=None):
        self.store, self.lose_on_ack, self.acks = store, lose_on_ack, 0
        self.waiting = collections.defaultdict(collections.deque)
        self.subscriptions = []

    def subscribe(self, names, prefetch):
        self.subscriptions.append(names)
        for name in names:
            self.waiting[name].extend(
                worker.Delivery(name, body, body) for body in self.store[name]
            )

    def wait(self, seconds):
        pass

    def publish(self, queue, bodies, confirmed=lambda count: None):
        self.store[queue].extend(bodies)

    def ack(self, delivery):
        self.acks += 1
        if self.acks == self.lose_on_ack:
            raise worker.ConnectionLost("connection reset")
        self.store[delivery.queue].remove(delivery.token)

    def close(self):
        pass


def test_move_requeues_dead_letters_across_a_reconnect(capsys):
    broker = {
        "jobs.high.dead": [job(1), job(2)],
        "jobs.low.dead": [job(3), job(4)],
        "jobs.very_low.dead": [],
        "jobs.high": [],
    }
    first, second = Mover(broker, lose_on_ack=2), Mover(broker)
    clock = FakeClock()
    reconnects = worker.Reconnects(connections(first, second), 300, clock.sleep, lambda: 0.5)
    args = types.SimpleNamespace(source="dead", target="high", id=None, count=10, scan=100)
    assert worker.move(args, {"BROKER_KIND": "rabbitmq", **PRIORITY}, reconnects) == 0

    # Job 3 was published before its ack was lost: it is moved again, and waits twice.
    assert broker == {
        "jobs.high.dead": [],
        "jobs.low.dead": [],
        "jobs.very_low.dead": [],
        "jobs.high": [job(1), job(3), job(2), job(3), job(4)],
    }
    assert second.subscriptions == first.subscriptions
    assert clock.slept == [0.5]
    out, err = capsys.readouterr()
    assert "connecting again in 0.5 s, 1 moved" in err
    assert out.startswith("moved 4 job(s) from jobs.high.dead, jobs.low.dead, jobs.very_low.dead")


def test_move_from_dead_finds_one_job_in_activemqs_dead_letter_queue():
    broker = {"ActiveMQ.DLQ.Queue.jobs": [job(1), job(2), b"not json"], "jobs": []}
    reconnects = worker.Reconnects(connections(Mover(broker)), 300)
    args = types.SimpleNamespace(source="dead", target=None, id="2", count=1, scan=100)
    assert worker.move(args, {**PLAIN, "BROKER_KIND": "activemq"}, reconnects) == 0
    assert broker == {"ActiveMQ.DLQ.Queue.jobs": [job(1), b"not json"], "jobs": [job(2)]}


# --- queues: the worker declares none -----------------------------------------------------------


class RecordingChannel:
    """A pika channel that records every call and refuses any declaration: quorum queues
    (broker_queue_type quorum) refuse a redeclare without x-queue-type quorum, so the worker
    must use the queues the rabbitmq role declared, never declare them itself."""

    is_closed = False

    def __init__(self, calls):
        self.calls = calls

    def __getattr__(self, name):
        if "declare" in name:
            raise AssertionError(f"the worker called {name}")

        def call(*args, **kwargs):
            self.calls.append(name)

        return call


class RecordingConnection:
    is_open = True

    def __init__(self, calls):
        self.calls = calls

    def channel(self):
        return RecordingChannel(self.calls)

    def process_data_events(self, time_limit=0):
        self.calls.append("process_data_events")

    def close(self):
        self.calls.append("close")


def fake_pika(calls):
    exceptions = types.SimpleNamespace(
        AMQPConnectionError=type("AMQPConnectionError", (Exception,), {}),
        ChannelClosedByBroker=type("ChannelClosedByBroker", (Exception,), {}),
        ChannelWrongStateError=type("ChannelWrongStateError", (Exception,), {}),
    )
    return types.SimpleNamespace(
        exceptions=exceptions,
        URLParameters=lambda url: url,
        BlockingConnection=lambda parameters: RecordingConnection(calls),
        BasicProperties=lambda **kwargs: kwargs,
    )


def test_the_worker_consumes_publishes_and_moves_without_declaring_a_queue(monkeypatch, capsys):
    calls = []
    monkeypatch.setitem(sys.modules, "pika", fake_pika(calls))
    broker = worker.AmqpBroker("amqp://mq")
    broker.subscribe(["jobs.high", "jobs.low"], 2)
    broker.wait(0)
    broker.publish("jobs.high", [b'{"id": 1, "seconds": 0}'])
    broker.ack(worker.Delivery("jobs.high", b"{}", 1))
    broker.reject(worker.Delivery("jobs.high", b"x", 2))
    broker.close()
    environment = {
        "BROKER_KIND": "rabbitmq",
        "BROKER_URL": "amqp://mq",
        "BROKER_QUEUE": "jobs",
        "FLEET_POLL_ORDER": "jobs.high,jobs.low,jobs.high",
    }
    worker.publish(publishing(count=2, level="low"), environment)
    assert "warning" not in capsys.readouterr().out
    worker.publish(
        publishing(count=1, first_id=3, level="low", seconds=120),
        {**environment, "WORKER_MAX_JOB_SECONDS": "60"},
    )
    assert (
        "warning: jobs of 120 s exceed the group's max_job_seconds (60 s): its workers will "
        "dead-letter them" in capsys.readouterr().out
    )
    moved = worker.move(
        types.SimpleNamespace(
            source="low", target="high", scan=10, count=1, id=None, retry_seconds=300
        ),
        environment,
    )
    assert moved == 1  # its exit status: nothing was waiting, so nothing moved
    assert {"basic_qos", "basic_consume", "basic_publish", "basic_ack", "basic_reject"} <= set(
        calls
    )
    assert not [name for name in calls if "declare" in name]


def test_publish_and_move_find_a_group_with_no_process_on_this_host(tmp_path, monkeypatch):
    # A group at min 0 keeps its spec file when this host runs none of its processes: its
    # supervisord file has no program to name it, so move --from dead still works there.
    conf_dir, spec_dir = tmp_path / "conf.d", tmp_path / "workers"
    conf_dir.mkdir(), spec_dir.mkdir()
    monkeypatch.setattr(worker, "GROUP_FILE", str(conf_dir / "brokerfleet-{group}.conf"))
    monkeypatch.setattr(worker, "SPEC_DIR", str(spec_dir))
    spec = {"environment": {"BROKER_QUEUE": "thumbnails"}}
    (spec_dir / "thumbnails.9c45980d8e33.json").write_text(json.dumps(spec))
    (spec_dir / "thumbnails-big.1234.json").write_text("{}")  # another group: not read
    (conf_dir / "brokerfleet-thumbnails.conf").write_text("; Worker group thumbnails: 0\n")
    assert worker.group_environment("thumbnails") == spec["environment"]
    with pytest.raises(SystemExit, match="no worker of group 'thumb'"):
        worker.group_environment("thumb")
    # With programs, the file names the spec they start from.
    (spec_dir / "imports.ab.json").write_text(json.dumps({"environment": {"BROKER_QUEUE": "i"}}))
    (conf_dir / "brokerfleet-imports.conf").write_text(
        f"[program:imports-00]\ncommand=/usr/local/bin/brokerfleet-exec {spec_dir}/imports.ab.json"
        " imports-00\n"
    )
    assert worker.group_environment("imports") == {"BROKER_QUEUE": "i"}
