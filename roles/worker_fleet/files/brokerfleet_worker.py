#!/usr/bin/python3
"""brokerfleet reference worker: drains its group's queues the way the bundle expects workers to.

    brokerfleet-worker                      consume (run by supervisord)
    brokerfleet-worker publish --group G --count N [--level L] [--retry-seconds S]
                                            queue N demo jobs for group G (tests, benchmark,
                                            demos), with the broker settings its workers have
    brokerfleet-worker move --group G --from L --to L [--id ID | --count N] [--retry-seconds S]
                                            re-prioritise waiting jobs: move them to another
                                            level's queue; an interruption loses nothing
    brokerfleet-worker move --group G --from dead [--to L] [--id ID | --count N]
                                            requeue dead-lettered jobs: from the group's
                                            dead-letter queues (<queue>.dead on RabbitMQ,
                                            ActiveMQ.DLQ.Queue.<queue> on ActiveMQ) to its
                                            queue; a group with priority levels needs --to

A job is a JSON message {"id": ..., "seconds": ...}: the worker works for that long (computing
for "cpu_seconds" of CPU time first, when the job says, and waiting the rest), appends
"<id> <started> <finished>" (Unix times) to <done dir>/<queue>.log, then acknowledges, so
completed, lost and duplicated jobs can be counted. A message that is not a job is rejected
without requeue: RabbitMQ dead-letters it to <queue>.dead, ActiveMQ to its dead-letter queue.
So is a job announced longer than WORKER_MAX_JOB_SECONDS (the group's max_job_seconds), rather
than started: supervisord's stop timeout and RabbitMQ's consumer_timeout only allow for that
long, and a job that outlasts them is killed or redelivered mid-way, and done again.

The worker holds one long-lived consumer per queue, each with BROKER_PREFETCH unacknowledged
messages at most, and takes its next job from the queues in FLEET_POLL_ORDER (a weighted
cycle of queue names; a queue with nothing waiting is skipped), then FLEET_POLL_WHEN_IDLE
(queues polled only when every other one is empty). On SIGTERM it finishes and acks its
current job before it exits (on ActiveMQ, once the broker has confirmed that it took every
ack, or after DISCONNECT_SECONDS); it exits after WORKER_RECYCLE_AFTER jobs so supervisord
starts it fresh. Either way the messages it holds but has not started go back to their queues.

A lost broker connection, or none at start, does not end the worker: it logs a line, waits
(1 s doubling up to 30 s, jittered), connects again and resubscribes, for as long as it takes.
The broker requeues the messages the old connection held; a job done whose ack was lost with
the connection runs again (at-least-once).

publish and move get over a lost connection too, for --retry-seconds (default 300) in all:
each failed attempt logs a line to stderr (why, how long until the next, how far the work
got), then they wait the same way and connect again, to the next node of a cluster. publish
sends again every message not yet confirmed, from the first unconfirmed one on; a message
whose confirm was lost with the connection is sent twice (at-least-once). move subscribes
afresh and goes on. Once the time is up they exit with status 1, saying how many messages
were confirmed (moved).

Environment: BROKER_KIND (rabbitmq: AMQP through BROKER_URL, or any of BROKER_URLS, the
comma-separated URLs of every node of a cluster, python3-pika; activemq: STOMP through
BROKER_STOMP_URL, python3-stomp), BROKER_QUEUE, BROKER_PREFETCH, FLEET_POLL_ORDER,
FLEET_POLL_WHEN_IDLE, WORKER_RECYCLE_AFTER, WORKER_MAX_JOB_SECONDS (unset: jobs up to a day),
BROKERFLEET_DONE_DIR (default /var/lib/brokerfleet/done).
"""

import argparse
import collections
import configparser
import contextlib
import itertools
import json
import os
import random
import signal
import sys
import threading
import time
from urllib.parse import parse_qs, unquote, urlsplit

DONE_DIR = os.environ.get("BROKERFLEET_DONE_DIR", "/var/lib/brokerfleet/done")

# Longest wait, after an ack, for the broker to send the queue's next message (a round trip).
SETTLE_SECONDS = 0.05

# Messages a STOMP publisher sends before it waits for the broker's receipt.
PUBLISH_BATCH = 100

# Longest a STOMP connection waits, when it closes, for the broker to confirm its DISCONNECT.
DISCONNECT_SECONDS = 5

# move --from dead: the group's dead-letter queues.
DEAD = "dead"

# A delivery waiting in the worker: the queue it came from, its body, and what acks it.
Delivery = collections.namedtuple("Delivery", "queue body token")

# A job: its id, how long it lasts, and how much of that it computes (CPU time; the rest it
# waits, as on a network or disk).
Job = collections.namedtuple("Job", "id seconds cpu_seconds")


class ConnectionLost(Exception):
    """The broker connection is gone, or could not be opened: the worker connects again."""


@contextlib.contextmanager
def connection_lost_on(errors):
    """Report the broker library's `errors` (those that mean the connection is gone) as
    ConnectionLost, so the consume loop needs to know neither library."""
    try:
        yield
    except errors as error:
        raise ConnectionLost(repr(error)) from error


def log(message, file=None):
    print(f"[{os.environ.get('WORKER_PROCESS', 'worker')}] {message}", file=file, flush=True)


def parse_job(body):
    """The Job a message describes, or None when it is not a job."""
    try:
        job = json.loads(body)
        seconds = float(job["seconds"])
        cpu_seconds = float(job.get("cpu_seconds", 0))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if "id" not in job or not 0 <= seconds <= 86400 or not 0 <= cpu_seconds <= seconds:
        return None
    return Job(job["id"], seconds, cpu_seconds)


def compute(cpu_seconds):
    """Keep one CPU busy until this process has used `cpu_seconds` more CPU time: the part of
    a job that is computing, so that more workers than CPUs make it no faster."""
    end = time.process_time() + cpu_seconds
    while time.process_time() < end:
        pass


def record_done(queue, job_id, started):
    # One short O_APPEND write per job: atomic, so every process of a group can share the file.
    line = f"{job_id} {started:.3f} {time.time():.3f}\n"
    fd = os.open(
        os.path.join(DONE_DIR, f"{queue}.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
    )
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class AmqpBroker:
    """RabbitMQ through pika: a consumer per queue, basic.qos per consumer."""

    def __init__(self, url):
        import pika

        self.pika = pika
        # How pika reports a connection that is gone (or refused), and a channel the broker
        # closed (a consumer timeout, say): this worker's one channel gone, a new connection is
        # the way back. A host name that does not resolve comes through as a plain OSError.
        self.lost_errors = (
            pika.exceptions.AMQPConnectionError,
            pika.exceptions.ChannelClosedByBroker,
            pika.exceptions.ChannelWrongStateError,
            OSError,
        )
        with connection_lost_on(self.lost_errors):
            self.connection = pika.BlockingConnection(pika.URLParameters(url))
            self.channel = self.connection.channel()
        self.waiting = collections.defaultdict(collections.deque)
        self.confirming = False

    def subscribe(self, queues, prefetch):
        # Per-consumer QoS (global_qos false): every queue's consumer holds `prefetch` at most.
        with connection_lost_on(self.lost_errors):
            self.channel.basic_qos(prefetch_count=prefetch)
            for queue in queues:
                self.channel.basic_consume(queue, self._deliver(queue))

    def _deliver(self, queue):
        def on_message(_channel, method, _properties, body):
            self.waiting[queue].append(Delivery(queue, body, method.delivery_tag))

        return on_message

    def wait(self, seconds):
        """Wait up to `seconds` for deliveries (sooner if one arrives)."""
        with connection_lost_on(self.lost_errors):
            self.connection.process_data_events(time_limit=seconds)
        if self.channel.is_closed:
            # pika raises nothing here when the broker closes just the channel, and an idle
            # worker would wait for deliveries that can no longer come.
            raise ConnectionLost("the broker closed the channel")

    def settle(self, queue, seconds):
        """Give the broker a moment to replace the message just acked on `queue`."""
        if not self.waiting[queue]:
            with connection_lost_on(self.lost_errors):
                self.connection.process_data_events(time_limit=seconds)

    def work(self, seconds):
        end = time.monotonic() + seconds
        try:
            # Keeps heartbeats flowing (and deliveries arriving) during a long job.
            self.connection.sleep(seconds)
        except self.lost_errors:
            # The job itself does not need the broker: it runs to its end, and its ack fails.
            time.sleep(max(0.0, end - time.monotonic()))

    def ack(self, delivery):
        with connection_lost_on(self.lost_errors):
            self.channel.basic_ack(delivery.token)

    def reject(self, delivery):
        with connection_lost_on(self.lost_errors):
            self.channel.basic_reject(delivery.token, requeue=False)

    def publish(self, queue, bodies, confirmed=lambda count: None):
        """Publish persistently, in order, and wait until the broker has taken each message:
        confirmed(1) after each confirm."""
        persistent = self.pika.BasicProperties(delivery_mode=2, content_type="application/json")
        with connection_lost_on(self.lost_errors):
            if not self.confirming:
                self.channel.confirm_delivery()
                self.confirming = True
            for body in bodies:
                # With confirms on, basic_publish returns once the broker confirmed the message.
                self.channel.basic_publish("", queue, body, persistent, mandatory=True)
                confirmed(1)

    def close(self):
        # Closing requeues the messages delivered to this worker but not acked; a connection
        # that is gone has had them requeued already.
        with contextlib.suppress(*self.lost_errors):
            if self.connection.is_open:
                self.connection.close()


class StompBroker:
    """ActiveMQ through STOMP: a subscription per queue with client-individual acks."""

    def __init__(self, url):
        import stomp

        # How stomp.py reports a connection that is gone or refused; a socket that breaks
        # under a send raises its own OSError.
        self.lost_errors = (
            stomp.exception.ConnectFailedException,
            stomp.exception.NotConnectedException,
            OSError,
        )
        self.stomp = stomp
        parts = urlsplit(url)
        self.prefetch = parse_qs(parts.query).get("activemq.prefetchSize", ["1"])[0]
        self.connection = stomp.Connection(
            [(parts.hostname, parts.port or 61613)], heartbeats=(10000, 10000)
        )
        self.arrived = threading.Condition()
        self.waiting = collections.defaultdict(collections.deque)
        self.receipts, self.sent = set(), itertools.count()
        self.closing = False
        self.disconnected = False
        self.connection.set_listener("worker", self)
        with connection_lost_on(self.lost_errors):
            self.connection.connect(
                unquote(parts.username or ""), unquote(parts.password or ""), wait=True
            )

    # stomp.py calls these from its receiver thread.
    def on_message(self, frame):
        queue = frame.headers["destination"].removeprefix("/queue/")
        token = (frame.headers["message-id"], frame.headers["subscription"])
        with self.arrived:
            self.waiting[queue].append(Delivery(queue, frame.body, token))
            self.arrived.notify_all()

    def on_receipt(self, frame):
        with self.arrived:
            self.receipts.add(frame.headers["receipt-id"])
            self.arrived.notify_all()

    def on_error(self, frame):
        log(f"broker error: {frame.headers.get('message')} {frame.body[:200]}")

    def on_disconnected(self):
        if self.closing:
            return
        # The main thread notices in wait, settle or ack, and connects again. Nothing is lost:
        # the broker requeues the messages this connection held.
        with self.arrived:
            self.disconnected = True
            self.arrived.notify_all()

    def _check_connected(self):
        if self.disconnected:
            raise ConnectionLost("disconnected from the broker")

    def subscribe(self, queues, prefetch):
        # ActiveMQ takes a prefetch of exactly 1000 for "unset" and applies its policy instead.
        prefetch = 999 if prefetch == 1000 else prefetch
        with connection_lost_on(self.lost_errors):
            for index, queue in enumerate(queues):
                self.connection.subscribe(
                    f"/queue/{queue}",
                    id=str(index),
                    ack="client-individual",
                    headers={"activemq.prefetchSize": str(prefetch)},
                )

    def wait(self, seconds):
        with self.arrived:
            if not self.disconnected and not any(self.waiting.values()):
                self.arrived.wait(seconds)
        self._check_connected()

    def settle(self, queue, seconds):
        with self.arrived:
            self.arrived.wait_for(lambda: self.waiting[queue] or self.disconnected, seconds)
        self._check_connected()

    def work(self, seconds):
        time.sleep(seconds)

    def ack(self, delivery):
        self._check_connected()
        with connection_lost_on(self.lost_errors):
            self.connection.ack(*delivery.token)

    def reject(self, delivery):
        self._check_connected()
        # ActiveMQ treats a NACK as a poison ack: the message goes to the dead-letter queue.
        with connection_lost_on(self.lost_errors):
            self.connection.nack(*delivery.token)

    def publish(self, queue, bodies, confirmed=lambda count: None):
        """Publish persistently, in order, in batches of PUBLISH_BATCH frames: confirmed(n)
        once the receipt of a batch's last frame is back. That receipt confirms every earlier
        frame of the batch, since the broker handles a connection's frames in order."""
        bodies = iter(bodies)
        while batch := list(itertools.islice(bodies, PUBLISH_BATCH)):
            self._check_connected()
            with connection_lost_on(self.lost_errors):
                for body in batch:
                    receipt = f"publish-{next(self.sent)}"
                    self.connection.send(
                        f"/queue/{queue}",
                        body,
                        content_type="application/json",
                        headers={"persistent": "true", "receipt": receipt},
                    )
            self._await_receipt(receipt)
            confirmed(len(batch))

    def _await_receipt(self, receipt, timeout=30):
        with self.arrived:
            arrived = self.arrived.wait_for(
                lambda: receipt in self.receipts or self.disconnected, timeout
            )
            # The receipts of the batch's earlier frames came before this one.
            self.receipts.clear()
        self._check_connected()
        if not arrived:
            # Heartbeats would have noticed a dead connection: the broker is stuck. A new
            # connection sends the batch again.
            raise ConnectionLost(f"the broker did not confirm the messages within {timeout} s")

    def close(self):
        """Disconnect once the broker has taken every frame sent before, the last acks above
        all: its receipt of the DISCONNECT says so, since it handles a connection's frames in
        order (STOMP 1.1 and 1.2). Closing the socket without it can lose an ack the broker had
        not read yet, and the broker then redelivers a job already done: a make bench drain on
        ActiveMQ counted 2 jobs done twice, without a fault, after the drain before it.

        stomp.py 8's Connection.disconnect(receipt=...) waits for the receipt with no bound
        (Transport.stop()); the protocol's half of it, called here, sends the frame and
        returns, and the transport closes the socket when the receipt comes. This waits
        DISCONNECT_SECONDS at most, then closes the socket itself."""
        self.closing = True
        receipt = f"disconnect-{next(self.sent)}"
        with contextlib.suppress(*self.lost_errors):
            if self.disconnected or not self.connection.is_connected():
                return  # gone: there is nobody to tell, and stomp.py would send nothing
            # stomp.Connection is StompConnection11: STOMP 1.1's protocol class.
            self.stomp.protocol.Protocol11.disconnect(self.connection, receipt=receipt)
            with self.arrived:
                confirmed = self.arrived.wait_for(
                    lambda: receipt in self.receipts, DISCONNECT_SECONDS
                )
            if not confirmed:
                log(
                    f"the broker did not confirm the disconnect within {DISCONNECT_SECONDS:g} s: "
                    "closing the connection; it may redeliver the jobs acked last"
                )
                self.connection.transport.disconnect_socket()


def connect(environment, url=None):
    """A broker connection of BROKER_KIND, to ``url`` or the environment's one."""
    kind = environment.get("BROKER_KIND")
    if kind == "activemq":
        return StompBroker(url or environment["BROKER_STOMP_URL"])
    if kind == "rabbitmq":
        return AmqpBroker(url or environment["BROKER_URL"])
    sys.exit(f"BROKER_KIND must be rabbitmq or activemq, got {kind!r}")


class Endpoints:
    """The broker's endpoints (BROKER_URLS: every node of a cluster; else the one URL), in an
    order of this process's own, so that a fleet spreads over the nodes. Each connection
    attempt takes the next one: a worker whose node went away tries another."""

    def __init__(self, environment, rand=random):
        key = "BROKER_STOMP_URL" if environment.get("BROKER_KIND") == "activemq" else "BROKER_URL"
        urls = split(environment.get("BROKER_URLS")) if key == "BROKER_URL" else []
        self.urls = urls or [environment[key]]
        rand.shuffle(self.urls)
        self.environment, self.position = environment, 0

    def connect(self):
        url = self.urls[self.position % len(self.urls)]
        self.position += 1
        return connect(self.environment, url)


def split(names):
    return [name for name in (names or "").split(",") if name]


class Poller:
    """Picks the next delivery: the weighted cycle first, skipping queues with nothing
    waiting, then the when-idle queues. The cycle resumes after the last queue served, so
    every level gets its share of turns while it has work."""

    def __init__(self, order, when_idle):
        self.order, self.when_idle, self.position = order, when_idle, 0

    def next(self, waiting):
        for step in range(len(self.order)):
            queue = self.order[(self.position + step) % len(self.order)]
            if waiting[queue]:
                self.position = (self.position + step + 1) % len(self.order)
                return waiting[queue].popleft()
        for queue in self.when_idle:
            if waiting[queue]:
                return waiting[queue].popleft()
        return None


def backoff_delays(first=1.0, cap=30.0, rand=random.random):
    """Seconds to wait before each new attempt to connect: `first` doubling up to `cap`, with
    full jitter (a random part of it). The workers of a fleet lose their broker at the same
    moment; full jitter spreads their attempts over the whole interval, where equal jitter
    (half fixed, half random) would spread them over half of it. An attempt that comes early
    costs little: a refused connection."""
    ceiling = first
    while True:
        yield ceiling * rand()
        ceiling = min(cap, ceiling * 2)


def pause(seconds, stopping, sleep=time.sleep):
    """Sleep `seconds`, or less if SIGTERM comes. The handler only sets `stopping` and
    time.sleep resumes after a signal (PEP 475), so sleep in short steps and look."""
    while seconds > 0 and not stopping:
        step = min(seconds, 0.25)
        sleep(step)
        seconds -= step


def take_job(broker, poller, max_job_seconds=None):
    """Work and ack the next job waiting, or wait up to a second for one. True if a job was
    done. A job announced longer than `max_job_seconds` is rejected, not started."""
    delivery = poller.next(broker.waiting)
    if delivery is None:
        broker.wait(1)  # idle: a chance to notice SIGTERM every second
        return False
    job = parse_job(delivery.body)
    if job is None:
        log(f"rejecting a message that is not a job: {delivery.body[:80]!r}")
        broker.reject(delivery)
        return False
    job_id, seconds, cpu_seconds = job
    if max_job_seconds is not None and seconds > max_job_seconds:
        log(
            f"rejecting job {job_id} of {seconds:g} s: longer than the group's "
            f"max_job_seconds ({max_job_seconds:g} s), all a stopping worker is given to finish "
            "a job; it goes to the dead-letter queue"
        )
        broker.reject(delivery)
        return False
    started = time.time()
    compute(cpu_seconds)
    broker.work(seconds - cpu_seconds)
    record_done(delivery.queue, job_id, started)
    try:
        broker.ack(delivery)
    except ConnectionLost:
        log(f"job {job_id} done but its ack was lost: the broker will redeliver it")
        raise
    # The ack lets the broker send that queue's next message; without this pause a level
    # whose next job is still on the wire would lose its turn to a lower one.
    broker.settle(delivery.queue, SETTLE_SECONDS)
    return True


def consume_jobs(
    connect,
    queues,
    prefetch,
    poller,
    stopping,
    recycle_after=0,
    max_job_seconds=None,
    sleep=time.sleep,
    rand=random.random,
):
    """Work jobs from `queues` until SIGTERM (`stopping`) or `recycle_after` jobs.

    `connect()` opens a broker connection. When it fails, or the connection is lost later, the
    loop waits (backoff_delays), connects again and resubscribes, and never gives up by
    itself. Each connection is a new broker object: the deliveries the old one held, which
    the broker requeues, are dropped with it, so no token of a dead connection is acked.
    """
    broker, delays, done = None, backoff_delays(rand=rand), 0
    while not stopping:
        try:
            if broker is None:
                broker = connect()
                broker.subscribe(queues, prefetch)
                # Connected: the next loss starts again from a short wait.
                delays = backoff_delays(rand=rand)
                log(f"consuming {', '.join(queues)} with prefetch {prefetch}")
            if take_job(broker, poller, max_job_seconds):
                done += 1
                if recycle_after and done >= recycle_after:
                    log(f"recycling after {done} jobs")
                    break
        except ConnectionLost as lost:
            if broker is not None:
                broker.close()
                broker = None
            delay = next(delays)
            log(f"no broker connection ({lost}): connecting again in {delay:.1f} s")
            pause(delay, stopping, sleep)
    if stopping:
        log("SIGTERM: finished the current job, exiting")
    if broker is not None:
        broker.close()


def consume():
    order = split(os.environ.get("FLEET_POLL_ORDER")) or [os.environ["BROKER_QUEUE"]]
    when_idle = split(os.environ.get("FLEET_POLL_WHEN_IDLE"))
    queues = list(dict.fromkeys(order + when_idle))
    prefetch = int(os.environ.get("BROKER_PREFETCH", "1"))
    recycle_after = int(os.environ.get("WORKER_RECYCLE_AFTER") or 0)
    max_job_seconds = job_allowance(os.environ)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    poller = Poller(order, when_idle)
    consume_jobs(
        Endpoints(os.environ).connect,
        queues,
        prefetch,
        poller,
        stopping,
        recycle_after,
        max_job_seconds,
    )


def job_allowance(environment):
    """WORKER_MAX_JOB_SECONDS as a number, or None when unset (a worker started by hand, or
    from a spec written before the bundle set it): no allowance but parse_job's day."""
    value = environment.get("WORKER_MAX_JOB_SECONDS")
    return float(value) if value else None


GROUP_FILE = "/etc/supervisor/conf.d/brokerfleet-{group}.conf"
SPEC_DIR = "/etc/brokerfleet/workers"


def group_environment(group):
    """The environment the workers of ``group`` get: the spec file their programs start from
    (brokerfleet-exec SPEC PROCESS, in the group's supervisord file). A group with no process
    on this host (min 0) still has its one spec file, <group>.<revision>.json: the run removes
    the others."""
    config = configparser.RawConfigParser(interpolation=None)
    path = GROUP_FILE.format(group=group)
    if config.read(path) and config.sections():
        spec = config.get(config.sections()[0], "command").split()[1]
    else:
        names = os.listdir(SPEC_DIR) if os.path.isdir(SPEC_DIR) else []
        specs = [n for n in names if n.endswith(".json") and n.rsplit(".", 2)[0] == group]
        if len(specs) != 1:
            sys.exit(f"no worker of group {group!r} in {path}, nor its spec in {SPEC_DIR}")
        spec = os.path.join(SPEC_DIR, specs[0])
    with open(spec, encoding="utf-8") as handle:
        return json.load(handle)["environment"]


def group_queues(environment):
    """The queues the group whose environment this is consumes: its queue, or one per priority
    level (none in an environment without FLEET_POLL_ORDER, written by hand)."""
    names = split(environment.get("FLEET_POLL_ORDER"))
    return list(dict.fromkeys(names + split(environment.get("FLEET_POLL_WHEN_IDLE"))))


def level_queue(environment, level, option="--level"):
    """The queue of a priority level of the group whose environment this is."""
    queue = f"{environment['BROKER_QUEUE']}.{level}" if level else environment["BROKER_QUEUE"]
    known = group_queues(environment)
    if known and queue not in known:
        sys.exit(f"the group consumes {', '.join(known)}, not {queue}: give {option}")
    return queue


def dead_letter_queue(environment, queue):
    """Where the broker puts what `queue` dead-letters, named as plugins/module_utils/brokers.py
    names it: <queue>.dead on RabbitMQ (the bundle's policy), ActiveMQ.DLQ.Queue.<queue> on
    ActiveMQ (individualDeadLetterStrategy)."""
    if environment.get("BROKER_KIND") == "activemq":
        return f"ActiveMQ.DLQ.Queue.{queue}"
    return f"{queue}.dead"


def move_queues(environment, source, target):
    """The queues `move --from source --to target` takes jobs from, and the one it moves them
    to. --from dead takes them from the dead-letter queue of every queue the group consumes;
    --to is then the group's queue by default, but a group with priority levels must name a
    level."""
    if source == DEAD:
        queue = environment["BROKER_QUEUE"]
        consumed = group_queues(environment) or [queue]
        if target is None and consumed != [queue]:
            levels = ", ".join(name.removeprefix(f"{queue}.") for name in consumed)
            sys.exit(f"the group has priority levels: give --to, one of {levels}")
        sources = [dead_letter_queue(environment, name) for name in consumed]
    else:
        sources = [level_queue(environment, source, "--from")]
    return sources, level_queue(environment, target, "--to")


class Reconnects:
    """The broker connections of a command run by hand (publish, move), which gets over a lost
    one: run(work) calls work(broker) on a new connection each time the last one was lost (or
    could not be opened), after a wait (backoff_delays, from a short one again once work went
    through), and each time on the next endpoint. It gives up, with exit status 1, once the
    broker has been away for `retry_seconds` in all, counting from each loss until work went
    through again."""

    def __init__(
        self, connect, retry_seconds, sleep=time.sleep, rand=random.random, clock=time.monotonic
    ):
        self.connect, self.retry_seconds = connect, retry_seconds
        self.sleep, self.rand, self.clock = sleep, rand, clock
        self.delays = backoff_delays(rand=rand)
        self.away = 0.0  # seconds without the broker, over the outages that are over
        self.lost_at = None  # when the current outage began

    def went_through(self):
        """Work went through (a message confirmed, a job moved): any outage is over."""
        if self.lost_at is not None:
            self.away += self.clock() - self.lost_at
            self.lost_at = None
            self.delays = backoff_delays(rand=self.rand)

    def run(self, work, progress):
        """What work(broker) returns, on as many connections as it takes. progress() says how
        far the work got, for the log and the final error."""
        while True:
            broker = None
            try:
                broker = self.connect()
                return work(broker)
            except ConnectionLost as lost:
                now = self.clock()
                if self.lost_at is None:
                    self.lost_at = now
                left = self.retry_seconds - self.away - (now - self.lost_at)
                if left <= 0:
                    sys.exit(
                        f"no broker connection ({lost}) for {self.retry_seconds:g} s in all "
                        f"(--retry-seconds): giving up, {progress()}"
                    )
                delay = min(next(self.delays), left)
                log(
                    f"no broker connection ({lost}): connecting again in {delay:.1f} s, "
                    f"{progress()}",
                    file=sys.stderr,
                )
                self.sleep(delay)
            finally:
                if broker is not None:
                    broker.close()


def publish(args, environment, reconnects=None):
    """Publish args.count jobs, in order, at least once: after a lost connection, every job
    not yet confirmed is sent again, from the first unconfirmed one on; one whose confirm was
    lost with the connection is queued twice."""
    queue = level_queue(environment, args.level)
    allowance = job_allowance(environment)
    if allowance is not None and args.seconds > allowance:
        log(
            f"warning: jobs of {args.seconds:g} s exceed the group's max_job_seconds "
            f"({allowance:g} s): its workers will dead-letter them"
        )
    reconnects = reconnects or Reconnects(Endpoints(environment).connect, args.retry_seconds)
    ids = range(args.first_id, args.first_id + args.count)
    confirmed = 0

    def confirm(count):
        nonlocal confirmed
        confirmed += count
        reconnects.went_through()

    def send(broker):
        bodies = (json.dumps({"id": i, "seconds": args.seconds}) for i in ids[confirmed:])
        broker.publish(queue, bodies, confirm)

    reconnects.run(send, lambda: f"{confirmed} of {args.count} confirmed")
    print(f"published {args.count} jobs of {args.seconds} s to {queue}")


def move(args, environment, reconnects=None):
    """Move waiting jobs from one level's queue to another's, or from the dead-letter queues.

    Each job is published to the target (confirmed by the broker) before it is acked on the
    source, so an interruption between the two leaves the job in both queues, never in none.
    Jobs not chosen are left unacked and go back to the source when the command exits. After
    a lost connection it subscribes again and goes on: a job whose ack was lost is back in the
    source and moved again (it then waits twice in the target).
    """
    sources, target = move_queues(environment, args.source, args.target)
    reconnects = reconnects or Reconnects(Endpoints(environment).connect, args.retry_seconds)
    moved, scanned = 0, 0

    def move_some(broker):
        nonlocal moved, scanned
        broker.subscribe(sources, args.scan)
        poller, looked = Poller(sources, []), 0  # --scan counts afresh on a new subscription
        while moved < args.count and looked < args.scan:
            delivery = poller.next(broker.waiting)
            if delivery is None:
                broker.wait(2)
                if not any(broker.waiting[source] for source in sources):
                    return  # nothing more waiting
                continue
            looked += 1
            scanned += 1
            job = parse_job(delivery.body)
            if args.id is not None and (job is None or str(job[0]) != args.id):
                continue
            broker.publish(target, [delivery.body])
            broker.ack(delivery)
            moved += 1
            reconnects.went_through()

    reconnects.run(move_some, lambda: f"{moved} moved")
    print(f"moved {moved} job(s) from {', '.join(sources)} to {target} ({scanned} looked at)")
    return 0 if moved else 1


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb")
    retrying = argparse.ArgumentParser(add_help=False)
    retrying.add_argument(
        "--retry-seconds",
        type=float,
        default=300,
        help="give up once the broker has been away this long in all (default 300)",
    )
    pub = verbs.add_parser("publish", help="queue demo jobs", parents=[retrying])
    pub.add_argument(
        "--group", required=True, help="take queue and broker from this group's settings"
    )
    pub.add_argument("--level", help="priority level, for a group with priority_levels")
    pub.add_argument("--count", type=int, required=True)
    pub.add_argument("--seconds", type=float, default=0.1)
    pub.add_argument("--first-id", type=int, default=1)
    mov = verbs.add_parser(
        "move",
        help="move waiting jobs to another priority level, or requeue dead-lettered ones",
        parents=[retrying],
    )
    mov.add_argument("--group", required=True)
    mov.add_argument(
        "--from",
        dest="source",
        required=True,
        help=f"level the jobs wait in, or {DEAD}: the group's dead-letter queues",
    )
    mov.add_argument(
        "--to",
        dest="target",
        help=f"level to move them to (with --from {DEAD}: the group's queue by default)",
    )
    mov.add_argument("--id", help="move only the job with this id")
    mov.add_argument("--count", type=int, default=1, help="move at most this many (default 1)")
    mov.add_argument("--scan", type=int, default=1000, help="look at most at this many jobs")
    args = parser.parse_args(argv)
    if args.verb == "move" and args.target is None and args.source != DEAD:
        mov.error(f"--to is required, unless --from {DEAD}")
    if args.verb == "publish":
        publish(args, group_environment(args.group))
    elif args.verb == "move":
        sys.exit(move(args, group_environment(args.group)))
    else:
        consume()


if __name__ == "__main__":
    main(sys.argv[1:])
