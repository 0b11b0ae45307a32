#!/usr/bin/python3
"""One timed drain on a bench host (run there as root by bench/run.py, with Debian's python3).

    python3 drain.py --group G --workers W [--prefetch P] [--timeout S] < jobs.json

jobs.json is a list of jobs {"id", "seconds", "cpu_seconds" (optional), "level" (optional:
the group's priority level), "at" (optional: seconds after the first publish)}. The drain
starts W reference workers (/usr/local/bin/brokerfleet-worker) with the environment the
bundle gave group G (its spec file; BROKER_PREFETCH replaced by --prefetch when given, 0 for
unbounded), waits until each one is consuming, publishes the jobs at their times through the
worker's own broker code, and waits until every job is done. It prints one JSON object:
{"published": {id: unix time}, "done": [[id, queue, started, finished], ...]}, and leaves the
arithmetic to bench/figures.py.

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
import time

WORKER = "/usr/local/bin/brokerfleet-worker"


def load_worker():
    """The reference worker installed on this host, as a module: its broker code publishes."""
    loader = importlib.machinery.SourceFileLoader("brokerfleet_worker", WORKER)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


worker = load_worker()


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


def publish(environment, jobs):
    """Send the jobs at their times ("at"), in order; the time each one was sent."""
    send, close = sender(environment)
    published, batches = {}, {}
    for job in jobs:
        batches.setdefault(job.get("at", 0), []).append(job)
    started = time.time()
    for at in sorted(batches):
        time.sleep(max(0.0, started + at - time.time()))
        for job in batches[at]:
            body = {key: job[key] for key in ("id", "seconds", "cpu_seconds") if key in job}
            send(worker.level_queue(environment, job.get("level")), json.dumps(body))
            published[job["id"]] = time.time()
    close()
    return published


def read_done(directory):
    done = []
    for name in os.listdir(directory):
        if name.endswith(".log"):
            with open(os.path.join(directory, name), encoding="utf-8") as log:
                for line in log:
                    job_id, started, finished = line.split()
                    done.append([int(job_id), name[:-4], float(started), float(finished)])
    return done


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--prefetch", type=int, help="instead of the group's (0: unbounded)")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    jobs = json.load(sys.stdin)
    environment = {"PATH": os.environ["PATH"], **worker.group_environment(args.group)}
    if args.prefetch is not None:
        environment["BROKER_PREFETCH"] = str(args.prefetch)
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as directory:
        processes = start_workers(environment, args.workers, directory)
        try:
            wait_until_consuming(processes, directory)
            published = publish(environment, jobs)
            deadline = time.monotonic() + args.timeout
            while len({row[0] for row in read_done(directory)}) < len(jobs):
                if time.monotonic() > deadline:
                    sys.exit(f"timed out: {len(read_done(directory))} of {len(jobs)} jobs done")
                time.sleep(0.1)
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(timeout=60)
        json.dump({"published": published, "done": read_done(directory)}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
