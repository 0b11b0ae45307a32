"""What the scenarios' testinfra tests share: the test hosts, and what an operator would run
on them (rabbitmqctl, supervisorctl, the reference worker's publish verb)."""

import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import testinfra
import yaml

VHOST = "brokerfleet"
STATE = "/var/lib/brokerfleet-check"  # the state files of brokerfleet-check, root's only


@pytest.fixture(scope="session")
def broker():
    return testinfra.get_host("podman://broker")


@pytest.fixture(scope="session")
def worker():
    return testinfra.get_host("podman://worker")


@pytest.fixture(scope="session")
def group_vars():
    """The scenario's inventory variables, as molecule wrote them."""
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    return yaml.safe_load((inventory / "group_vars" / "all").read_text())


def rabbitmqctl(broker, *args):
    """A rabbitmqctl command's answer, parsed from its JSON formatter."""
    return json.loads(broker.check_output("rabbitmqctl --formatter json -q " + " ".join(args)))


def queues(broker):
    columns = "name durable policy messages_ready messages_unacknowledged consumers"
    return {q["name"]: q for q in rabbitmqctl(broker, "list_queues", "-p", VHOST, columns)}


def running(worker):
    """{process name: pid} of the RUNNING supervisord processes."""
    processes = {}
    for line in worker.run("supervisorctl status").stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == "RUNNING":
            processes[fields[0]] = int(fields[3].rstrip(","))
    return processes


def of_group(processes, group):
    return {name: pid for name, pid in processes.items() if name.rsplit("-", 1)[0] == group}


def publish(worker, group, count, seconds, first_id=1, level=None):
    worker.check_output(
        f"brokerfleet-worker publish --group {group} --count {count} --seconds {seconds} "
        f"--first-id {first_id}" + (f" --level {level}" if level else "")
    )


def done_jobs(worker, queue):
    """(id, started, finished) of each job the reference workers of ``queue`` completed,
    repeats included."""
    path = f"/var/lib/brokerfleet/done/{queue}.log"
    lines = worker.run(f"cat {path} 2>/dev/null").stdout.splitlines()
    return [(int(i), float(s), float(f)) for i, s, f in (line.split() for line in lines)]


def done_ids(worker, queue):
    """Ids the reference workers of ``queue`` recorded as completed, repeats included."""
    return [job[0] for job in done_jobs(worker, queue)]


def wait_until(condition, timeout, step=1.0):
    """Poll ``condition`` until it returns something truthy; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def converge(**extra_vars):
    """Re-run site.yml as molecule's converge does, with extra variables."""
    return ansible_playbook("site.yml", **extra_vars)


def ansible_playbook(playbook, expect_failure=False, options=(), **extra_vars):
    """Run one of the bundle's playbooks on the scenario's hosts, with command-line
    ``options`` (--limit ...); its output. It must succeed, or with ``expect_failure`` fail."""
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    playbook = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / playbook
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    result = subprocess.run(
        [
            *("ansible-playbook", "-i", str(inventory), *options),
            *(str(playbook), "-e", json.dumps(extra_vars)),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert (result.returncode != 0) == expect_failure, result.stdout + result.stderr
    return result.stdout


def changed_tasks(output):
    """{host: [task]} of what a run's output says each task changed on each host ("changed:"
    lines under a TASK or RUNNING HANDLER header); a task changed by several loop items once."""
    changed, task = {}, None
    for line in output.splitlines():
        header = re.match(r"^(?:TASK|RUNNING HANDLER) \[(.*)\] \*+$", line)
        if header:
            task = header.group(1)
            continue
        done = re.match(r"^changed: \[([^\]\s]+)", line)
        if done and task and task not in changed.get(done.group(1), []):
            changed.setdefault(done.group(1), []).append(task)
    return changed


def check(host, name):
    """(exit code, JSON answer) of `brokerfleet-check <name> --json` on ``host``."""
    result = host.run(f"brokerfleet-check {name} --json")
    return result.rc, json.loads(result.stdout)


def cron_runs(*checks, timeout=75):
    """Whether cron runs each (host, check name) of ``checks``: waits for a run of each after
    now. Each run renews /var/lib/brokerfleet-check/last-<check>.json; the tests run the checks
    by hand only one at a time, so a renewal meanwhile is cron's."""

    def renewed_since(host, name, start):
        path = f"{STATE}/last-{name}.json"
        return lambda: int(host.run(f"stat -c %Y {path} || echo 0").stdout) > start

    waits = [renewed_since(host, name, int(host.check_output("date +%s"))) for host, name in checks]
    return all(wait_until(renewed, timeout) for renewed in waits)


def in_background(host, command, name):
    """Start ``command`` on ``host`` without waiting; its output goes to /tmp/<name>.log."""
    host.check_output(f"setsid sh -c {shlex.quote(command)} </dev/null >/tmp/{name}.log 2>&1 &")


def unsettled(worker):
    """supervisord processes that gave up or keep failing to start."""
    states = worker.run("supervisorctl status").stdout
    return [line for line in states.splitlines() if " FATAL " in line or " BACKOFF " in line]


def rabbitmq_depth(broker, queue):
    """(ready, unacked) jobs of ``queue``."""
    found = queues(broker)[queue]
    return found["messages_ready"], found["messages_unacknowledged"]


DRILLS = []  # a row per fault drill, printed as a table when the session ends


@pytest.fixture(scope="session", autouse=True)
def drill_table():
    yield
    if DRILLS:
        header = ("drill", "published", "completed", "queued", "lost", "duplicates", "recovery s")
        lines = [header, *DRILLS]
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
        print()
        for line in lines:
            print("| " + " | ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)))


class Drill:
    """A fault drill: a backlog of ``count`` confirmed, persistent jobs of ``seconds`` (ids
    from ``first_id``) draining through ``group``'s workers (from its ``level``'s queue, for a
    group with priority levels). `fault()` starts the recovery clock; `finish()` waits until
    the fleet is back and the queue drained, then counts every job (published = completed +
    still queued) and adds the row to the table. ``depth(broker, queue)`` gives a queue's
    (ready, unacked) jobs."""

    def __init__(
        self, name, broker, worker, group, count, seconds, first_id, level=None, depth=None
    ):
        self.name, self.broker, self.worker = name, broker, worker
        self.queue = f"{group}.{level}" if level else group
        self.depth = depth or rabbitmq_depth
        self.ids = list(range(first_id, first_id + count))
        publish(worker, group, count, seconds, first_id, level)
        assert wait_until(lambda: self.depth(broker, self.queue)[1], 30), "no worker took a job"
        time.sleep(seconds / 2)  # the workers are mid-job
        self.started = None

    def fault(self):
        self.started = time.monotonic()

    def finish(self, recovered, timeout):
        """Wait for ``recovered()``, then for the queue to drain; the seconds to recovery."""
        back = wait_until(recovered, timeout, step=0.5)
        recovery = round(time.monotonic() - self.started, 1)
        assert back, f"{self.name}: the fleet was not back within {timeout} s"
        wait_until(lambda: not any(self.depth(self.broker, self.queue)), 180)
        wanted = set(self.ids)
        done = [i for i in done_ids(self.worker, self.queue) if i in wanted]
        queued = sum(self.depth(self.broker, self.queue))
        completed, duplicates = len(set(done)), len(done) - len(set(done))
        lost = len(self.ids) - completed - queued
        DRILLS.append((self.name, len(self.ids), completed, queued, lost, duplicates, recovery))
        print(DRILLS[-1])
        assert lost == 0, f"{self.name}: {lost} jobs lost"
        assert not unsettled(self.worker)
        return recovery
