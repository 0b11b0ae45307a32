#!/usr/bin/python3
"""One timed drain on a bench host (run there as root by bench/run.py, with Debian's python3).

    python3 drain.py --group G --workers W [--prefetch P] [--timeout S] [--backlog] < jobs.json

jobs.json is a list of jobs {"id", "seconds", "cpu_seconds" (optional), "level" (optional:
the group's priority level), "at" (optional: seconds after the first publish)}. The drain
starts W reference workers (/usr/local/bin/brokerfleet-worker) with the environment the
bundle gave group G (its spec file; BROKER_PREFETCH replaced by --prefetch when given, 0 for
unbounded), waits until each one is consuming, publishes the jobs at their times through the
worker's own broker code, and waits until every job is done. It prints one JSON object:
{"published": {id: unix time}, "done": [[id, queue, started, finished], ...], "strays": [...]},
and leaves the arithmetic to bench/figures.py.

Each drain sends its jobs under ids of its own: job n of the host's k-th drain goes out as
k * DRAIN_IDS + n, and comes back as n. A drain refuses to start while the group's queues hold
a message, and any job of an earlier drain done all the same (redelivered after its ack was
lost, say) is listed under "strays" with the id it went out with, never counted as this
drain's.

--backlog (RabbitMQ only; make bench P4, a day's backlog): every job is published first,
persistent and confirmed, before any worker starts, and the workers then drain the backlog.
Meanwhile a thread samples the broker's memory and the queue's depth. The output adds
"backlog" (the publish: its first send and last confirm, unix times, and the messages
published, acked, nacked and returned), "samples" [{"time", "depth", "mem_used", "mem_limit",
"mem_alarm"}, ...] and "sample_failures"; "published" is empty (no time per job).

The group's own workers must be paused (brokerfleet-check pause G) so that only these drain.
"""

import argparse
import importlib.machinery
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

WORKER = "/usr/local/bin/brokerfleet-worker"
CHECK = "/usr/local/sbin/brokerfleet-check"

# How many drains this host has run: each one's job ids start at its number x DRAIN_IDS.
DRAINS = "/var/tmp/brokerfleet-bench-drains"
DRAIN_IDS = 10**9

# --backlog: messages published and not yet confirmed, at most (a BlockingConnection with
# confirms would wait for each one in turn), how often the broker is sampled, and how long
# the publish may take.
WINDOW = 1000
SAMPLE_SECONDS = 1.0
PUBLISH_TIMEOUT = 300

# The host programs the bundle installed, as modules (main() loads them): the worker's broker
# code publishes and names the queues; brokerfleet-check's reads the broker's config and its
# management API with the check's own credentials.
worker = check = None


def load(path, name):
    loader = importlib.machinery.SourceFileLoader(name, path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def start_workers(environment, count, directory):
    processes = []
    for index in range(count):
        name = f"bench-{index:02d}"
        log = open(os.path.join(directory, f"{name}.out"), "w")  # noqa: SIM115 (kept open)
        processes.append(
            subprocess.Popen(
                [WORKER],
                env={**environment, "WORKER_PROCESS": name, "BROKERFLEET_DONE_DIR": directory},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return processes


def wait_until_consuming(processes, directory, timeout=60):
    """Every worker has subscribed (it logs "consuming ..."): the jobs find them all there."""
    deadline = time.monotonic() + timeout
    for index, process in enumerate(processes):
        path = os.path.join(directory, f"bench-{index:02d}.out")
        while True:
            with open(path, encoding="utf-8") as out:
                if "consuming" in out.read():
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"worker {index} did not start consuming: see {path}")
            time.sleep(0.05)


def next_drain(path=DRAINS):
    """This drain's number on this host: 1 for its first."""
    try:
        with open(path, encoding="utf-8") as counter:
            count = int(counter.read()) + 1
    except FileNotFoundError:
        count = 1
    with open(path, "w", encoding="utf-8") as counter:
        counter.write(str(count))
    return count


def check_ids(jobs):
    bad = [
        job["id"] for job in jobs if not isinstance(job["id"], int) or not 0 < job["id"] < DRAIN_IDS
    ]
    if bad:
        sys.exit(f"job ids must be whole numbers from 1 to {DRAIN_IDS - 1}, not {bad[:5]}")


def waiting_messages(environment, queues):
    """{queue: messages in it now}, asked of the broker itself. RabbitMQ: a passive
    queue.declare (its message count, the ready ones: with the group paused no consumer holds
    any), on the group's own connection; the management API's counts lag by up to 5 s.
    ActiveMQ: brokerfleet-check's statistics, whose queue size counts every message not acked."""
    if environment["BROKER_KIND"] == "rabbitmq":
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(environment["BROKER_URL"]))
        try:
            channel = connection.channel()
            return {q: channel.queue_declare(q, passive=True).method.message_count for q in queues}
        finally:
            connection.close()
    held = check.activemq_sample(broker_config())["queues"]
    return {q: held[q]["ready"] + held[q]["unacked"] if q in held else 0 for q in queues}


def check_empty(counts):
    """Exit, naming them, when the queues hold messages: an earlier drain's leftovers, which
    this drain's workers would take and time."""
    left = {queue: count for queue, count in counts.items() if count}
    if left:
        sys.exit(
            "the group's queues are not empty before the drain, so an earlier drain left jobs "
            f"(or the group is not paused): {left}"
        )


def sender(environment):
    """send(queue, body) and close() for a publisher fast enough not to be what a drain
    measures: on RabbitMQ without confirms (a confirm per message takes longer than a job of
    10 ms); the drain counts every job done instead. ActiveMQ: the worker's own STOMP code,
    which waits for a receipt every 100 messages."""
    if environment["BROKER_KIND"] == "rabbitmq":
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(environment["BROKER_URL"]))
        channel = connection.channel()
        persistent = pika.BasicProperties(delivery_mode=2, content_type="application/json")
        return lambda queue, body: channel.basic_publish(
            "", queue, body, persistent
        ), connection.close
    broker = worker.connect(environment)
    return lambda queue, body: broker.publish(queue, [body]), broker.close


def job_body(job, base):
    """The message of a job: what `brokerfleet-worker publish` sends, under the drain's id."""
    body = {key: job[key] for key in ("seconds", "cpu_seconds") if key in job}
    return json.dumps({"id": base + job["id"], **body})


def publish(environment, jobs, base):
    """Send the jobs at their times ("at"), in order; the time each one was sent."""
    send, close = sender(environment)
    published, batches = {}, {}
    for job in jobs:
        batches.setdefault(job.get("at", 0), []).append(job)
    started = time.time()
    for at in sorted(batches):
        time.sleep(max(0.0, started + at - time.time()))
        for job in batches[at]:
            send(worker.level_queue(environment, job.get("level")), job_body(job, base))
            published[job["id"]] = time.time()
    close()
    return published


class Confirms:
    """The publisher confirms of one channel: which delivery tags (1, 2, ... in the order of
    publishing) the broker has acked or nacked. A confirm with `multiple` set settles every tag
    up to its own that was not settled yet; RabbitMQ may confirm tags out of order."""

    def __init__(self):
        self.published = 0  # tags 1 to this went out
        self.first = 1  # the lowest tag not settled
        self.above = set()  # tags above `first` settled on their own
        self.acked = self.nacked = 0

    @property
    def settled(self):
        return self.acked + self.nacked

    @property
    def unconfirmed(self):
        return self.published - self.settled

    def settle(self, tag, multiple, ack):
        """An ack (ack true) or a nack of `tag`: how many tags it settled."""
        if tag > self.published:
            raise ValueError(f"a confirm of tag {tag}, but only {self.published} published")
        if multiple:
            count = sum(1 for t in range(self.first, tag + 1) if t not in self.above)
            self.above.difference_update(range(self.first, tag + 1))
            self.first = max(self.first, tag + 1)
        else:
            count = 0 if tag < self.first or tag in self.above else 1
            if count:
                self.above.add(tag)
        while self.first in self.above:
            self.above.remove(self.first)
            self.first += 1
        if ack:
            self.acked += count
        else:
            self.nacked += count
        return count


class BacklogPublisher:
    """Publishes `bodies` to `queue` through the default exchange, persistent and with
    mandatory set, as `brokerfleet-worker publish` does, but keeps up to `window` messages
    unconfirmed (pika's SelectConnection; the worker's BlockingConnection waits for each
    confirm in turn). Nothing is sent twice: a message nacked or returned is counted, and the
    caller fails the part. run() returns the figures, or exits when the connection fails or
    `timeout` passes before every message is confirmed."""

    def __init__(self, pika, url, queue, bodies, window=WINDOW, timeout=PUBLISH_TIMEOUT):
        self.pika, self.url, self.queue, self.bodies = pika, url, queue, bodies
        self.window, self.timeout = window, timeout
        self.properties = pika.BasicProperties(delivery_mode=2, content_type="application/json")
        self.confirms = Confirms()
        self.returned = self.blocked = 0
        self.first = self.last = self.error = None
        self.connection = self.channel = None

    def run(self):
        self.connection = self.pika.SelectConnection(
            self.pika.URLParameters(self.url),
            on_open_callback=self.on_open,
            on_open_error_callback=self.on_open_error,
            on_close_callback=self.on_closed,
        )
        self.connection.add_on_connection_blocked_callback(self.on_blocked)
        self.connection.ioloop.call_later(self.timeout, self.on_timeout)
        self.connection.ioloop.start()
        if self.error:
            sys.exit(f"--backlog: {self.error}")
        return {
            "first": self.first,
            "last": self.last,
            "published": self.confirms.published,
            "acked": self.confirms.acked,
            "nacked": self.confirms.nacked,
            "returned": self.returned,
            "blocked": self.blocked,
            "window": self.window,
        }

    def on_open(self, connection):
        connection.channel(on_open_callback=self.on_channel)

    def on_channel(self, channel):
        self.channel = channel
        channel.add_on_return_callback(self.on_return)
        channel.add_on_close_callback(self.on_channel_closed)
        channel.confirm_delivery(self.on_confirm, callback=self.on_confirming)

    def on_confirming(self, _frame):
        self.first = time.time()
        self.fill()

    def fill(self):
        """Publish until `window` messages are unconfirmed, or none is left: the hot loop."""
        sent = self.confirms.published
        batch = self.bodies[sent : sent + self.window - self.confirms.unconfirmed]
        publish, queue, properties = self.channel.basic_publish, self.queue, self.properties
        for body in batch:
            publish("", queue, body, properties, True)
        self.confirms.published += len(batch)

    def on_confirm(self, frame):
        method = frame.method
        ack = isinstance(method, self.pika.spec.Basic.Ack)
        self.confirms.settle(method.delivery_tag, method.multiple, ack)
        if self.confirms.settled < len(self.bodies):
            self.fill()
        elif self.last is None:
            self.last = time.time()
            self.connection.close()

    def on_return(self, _channel, _method, _properties, _body):
        # RabbitMQ acks a returned message too, after the return.
        self.returned += 1

    def on_blocked(self, _connection, _frame):
        self.blocked += 1

    def fail(self, error):
        if self.last is None and self.error is None:
            self.error = error
        if self.connection.is_open:
            self.connection.close()

    def on_timeout(self):
        if self.last is None:
            self.fail(
                f"{self.confirms.settled} of {len(self.bodies)} messages confirmed after "
                f"{self.timeout:g} s"
            )

    def on_channel_closed(self, _channel, reason):
        if self.last is None:
            self.fail(f"the channel closed: {reason!r}")

    def on_open_error(self, _connection, error):
        self.error = f"could not connect: {error!r}"
        self.connection.ioloop.stop()

    def on_closed(self, _connection, reason):
        if self.last is None and self.error is None:
            self.error = f"the connection closed: {reason!r}"
        self.connection.ioloop.stop()


def memory_sample(at, nodes, queue):
    """One sample of the broker's memory and the queue's depth from the management API's
    /api/nodes and /api/queues/<vhost>/<queue> answers. The bench host is one node."""
    (node,) = nodes
    return {
        "time": at,
        "depth": queue.get("messages_ready", 0) + queue.get("messages_unacknowledged", 0),
        "mem_used": node["mem_used"],
        "mem_limit": node["mem_limit"],  # the memory high watermark, in bytes
        "mem_alarm": bool(node["mem_alarm"]),
    }


class Sampler(threading.Thread):
    """Samples the broker every SAMPLE_SECONDS, through the management API as
    brokerfleet-check reads it (its broker.json and its user, tagged monitoring), until
    stopped. RabbitMQ refreshes what the API shows about every 5 s
    (collect_statistics_interval): enough for a chart of minutes."""

    def __init__(self, config, queue):
        super().__init__(daemon=True)
        self.config, self.stopped = config, threading.Event()
        vhost, name = (urllib.parse.quote(n, safe="") for n in (config["vhost"], queue))
        self.paths = (
            "/api/nodes?columns=name,mem_used,mem_limit,mem_alarm",
            f"/api/queues/{vhost}/{name}?columns=messages_ready,messages_unacknowledged",
        )
        self.samples, self.failures = [], 0

    def run(self):
        while not self.stopped.is_set():
            at = time.time()
            try:
                answers = [check.http_json(self.config, path)[1] for path in self.paths]
                self.samples.append(memory_sample(at, *answers))
            except (OSError, ValueError, KeyError, TypeError):
                self.failures += 1  # an answer that was late, refused or not what it should be
            self.stopped.wait(max(0.0, at + SAMPLE_SECONDS - time.time()))

    def stop(self):
        self.stopped.set()
        self.join()


def broker_config():
    """brokerfleet-check's broker.json (root's only: the bench runs as root)."""
    config = check.read_json(check.BROKER_CONFIG, None)
    if not isinstance(config, dict) or config.get("format") != check.BROKER_FORMAT:
        sys.exit(f"{check.BROKER_CONFIG} is missing or of another format")
    return config


def publish_backlog(environment, jobs, base):
    import pika

    queue = worker.level_queue(environment, None)
    # Encoded before the clock starts: the publish is timed, not json.dumps.
    bodies = [job_body(job, base).encode() for job in jobs]
    return BacklogPublisher(pika, environment["BROKER_URL"], queue, bodies).run()


def read_done(directory, base=0):
    """What the workers logged: this drain's jobs [id, queue, started, finished] under the ids
    jobs.json gave them, and the strays, any job from outside its range, under the id it went
    out with."""
    done, strays = [], []
    for name in os.listdir(directory):
        if name.endswith(".log"):
            with open(os.path.join(directory, name), encoding="utf-8") as log:
                for line in log:
                    job_id, started, finished = line.split()
                    job_id = int(job_id)
                    ours = 0 < job_id - base < DRAIN_IDS
                    row = [job_id - base if ours else job_id, name[:-4], float(started)]
                    (done if ours else strays).append([*row, float(finished)])
    return done, strays


def lines_done(directory):
    """Lines the workers logged, a job each: cheap enough to ask often during a long drain."""
    count = 0
    for name in os.listdir(directory):
        if name.endswith(".log"):
            with open(os.path.join(directory, name), "rb") as log:
                count += log.read().count(b"\n")
    return count


def wait_until_done(directory, base, count, timeout):
    """(done, strays) once each of the `count` jobs is done."""
    deadline = time.monotonic() + timeout
    while True:
        if lines_done(directory) >= count:
            done, strays = read_done(directory, base)
            if len({row[0] for row in done}) >= count:
                return done, strays
        if time.monotonic() > deadline:
            done, _ = read_done(directory, base)
            sys.exit(f"timed out: {len({row[0] for row in done})} of {count} jobs done")
        time.sleep(0.2)


def main(argv):
    global worker, check
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--prefetch", type=int, help="instead of the group's (0: unbounded)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--backlog", action="store_true", help="publish every job, confirmed, before the drain"
    )
    args = parser.parse_args(argv)
    worker, check = load(WORKER, "brokerfleet_worker"), load(CHECK, "brokerfleet_check")
    jobs = json.load(sys.stdin)
    check_ids(jobs)
    environment = {"PATH": os.environ["PATH"], **worker.group_environment(args.group)}
    if args.backlog and environment["BROKER_KIND"] != "rabbitmq":
        sys.exit("--backlog: RabbitMQ only")
    if args.prefetch is not None:
        environment["BROKER_PREFETCH"] = str(args.prefetch)
    queues = worker.group_queues(environment) or [environment["BROKER_QUEUE"]]
    check_empty(waiting_messages(environment, queues))
    base = next_drain() * DRAIN_IDS
    result = {"published": {}}
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as directory:
        sampler = None
        if args.backlog:
            sampler = Sampler(broker_config(), worker.level_queue(environment, None))
            sampler.start()
            result["backlog"] = publish_backlog(environment, jobs, base)
        processes = start_workers(environment, args.workers, directory)
        try:
            wait_until_consuming(processes, directory)
            if not args.backlog:
                result["published"] = publish(environment, jobs, base)
            result["done"], result["strays"] = wait_until_done(
                directory, base, len(jobs), args.timeout
            )
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(timeout=60)
            if sampler is not None:
                sampler.stop()
                result["samples"], result["sample_failures"] = sampler.samples, sampler.failures
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
