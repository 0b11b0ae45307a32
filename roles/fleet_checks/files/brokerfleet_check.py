#!/usr/bin/python3
"""brokerfleet-check: keeps this host's part of the fleet whole, and reports on it. Run by cron.

    brokerfleet-check workers   on worker hosts: restarts what died, sheds load (below)
    brokerfleet-check broker    on broker hosts: alarms, node health, queues (below)
    brokerfleet-check status    what this host runs, at a glance; changes nothing
    brokerfleet-check pause GROUP [--reason TEXT]   stop a group for maintenance (below)
    brokerfleet-check resume GROUP                  start it again
    brokerfleet-check quiesce --for SECONDS [--reason TEXT]   stop all groups a while (below)
    brokerfleet-check unquiesce                     start them again

Settings come from /etc/brokerfleet/checks.json (--settings; written by the fleet_checks role,
root's only), so cron runs a bare `brokerfleet-check workers --quiet`; each option below
overrides its setting. The play's files (that one, fleet.json and broker.json) carry a format
number: one of another format is reported UNKNOWN rather than half understood.

workers: starts supervisord if it is down; runs the load guard (when the load per CPU stays
above load_high for `runs` consecutive runs, stops one worker of the least important group:
importance 1 first, never below a group's min, never an importance-5 group; when it stays below
load_low as long, gives one back; state in /var/lib/brokerfleet-check/load-guard.json); then
starts the programs of /etc/brokerfleet/fleet.json, less what the guard shed, that are not
running.

broker: reads /etc/brokerfleet/broker.json (written by the broker role). RabbitMQ, through the
management API on loopback: memory and disk alarms, virtual hosts running, per queue ready,
unacked and consumers; in a cluster, each node (running, alarms, partitions, drained) and each
quorum queue's replicas online. ActiveMQ, through its statistics plugin over STOMP on this
host: memory, store and temp usage against their limits, and the same per queue. A worker
queue with jobs waiting and no consumer is CRITICAL. Failed jobs in a dead-letter queue are a
WARNING, CRITICAL while there are more than at the previous run (the last sample, in
/var/lib/brokerfleet-check/broker-sample.json) or when it is within 10% of its length limit
(broker.json): it is about to refuse failed jobs. A worker queue whose ready jobs reach 80% of
its max-length (broker.json) is a WARNING, 90% CRITICAL: it is about to refuse new jobs. One
whose backlog (ready and unacked) would take longer to work off at the rate its workers take
jobs than its group's max_drain_seconds (broker.json; unset: no alert) is a WARNING, twice as
long CRITICAL, and so are jobs waiting with none done and none in progress since the previous
sample (a group paused, or without consumers, is said otherwise). A node down is a WARNING
while a majority of the nodes runs, else CRITICAL; a partition is CRITICAL; a quorum queue
below a majority of its replicas online is CRITICAL, one missing a replica a WARNING.

pause: records the group as paused (when, why) in /var/lib/brokerfleet-check/paused.json, then
stops its workers gracefully (SIGTERM: each finishes its job within stopwaitsecs) and waits
for them. While a group is paused, the workers check keeps its programs stopped, and neither
the load guard nor autoscale sheds, gives back or moves its workers; the broker check takes
its backlog as expected (a note, not "no consumer"); the worker_fleet role renders its
programs autostart=false, so a re-run of the play or a restart of supervisord keeps them
stopped. resume: forgets the pause and starts the group's workers, less what the load guard
shed. The pause is this host's: a broker check elsewhere knows it only once it is paused on
the broker host too (a group this host only knows from broker.json is recorded, nothing
stopped). Exit 0 done, 2 refused (no such group), 3 failed (not root: the state is root's).

quiesce: what the play runs on every worker host before it restarts a single broker node (a
cluster drains the node instead). Records the groups of this host that are not paused, why,
and until when in /var/lib/brokerfleet-check/quiesced.json, then stops their workers at once
(SIGTERM, as pause does) and waits, holding the workers check's lock; once they all stopped,
the record holds them --for SECONDS more. While it holds, the workers check, the load guard,
autoscale, the broker check and status treat those groups as paused, and the workers check
leaves a stopped supervisord stopped. unquiesce forgets the record and starts the groups'
workers as resume does (a group paused meanwhile stays paused). Once the time is up, the
workers check forgets the record and starts them itself: a run that died between the two
leaves the fleet working again. Pauses are never touched. Exit codes as pause's.

status: per queue ready, unacked, consumers, in and out rates and the time to drain it; in a
cluster, each node and each quorum queue's leader and replicas online; the load per CPU and
the workers running against those expected, and the groups paused or quiesced. --no-broker
leaves the broker out.

Every action and problem goes to syslog and /var/log/brokerfleet/check.log. Exit codes follow
the Nagios convention: 0 OK, 1 WARNING (something was repaired or shed, or needs a look),
2 CRITICAL, 3 UNKNOWN (the check itself failed). --json prints the result as JSON; a
Prometheus textfile goes to <prometheus_dir>/brokerfleet-<check>.prom (or --prometheus FILE);
--quiet prints only news (an action, or problems that differ from the previous run's, recovery
included), so that cron mails once per change; the alert command runs with the report on stdin
on the same news. Python standard library and supervisor's XML-RPC interface only.

Its state lives in /var/lib/brokerfleet-check (root's, mode 0700), never in the workers' home.
Every file it writes goes through write_file(): a fresh temporary file, then a rename onto the
target, in a directory nobody but root may write to (see open_directory()); it neither writes
nor reads through a symlink.
"""

import argparse
import base64
import contextlib
import fcntl
import json
import logging
import logging.handlers
import os
import re
import secrets
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xmlrpc.client
from xml.etree import ElementTree

# What the play writes for this program, each of a format it checks (hostfiles.py).
MANIFEST = "/etc/brokerfleet/fleet.json"
FLEET_FORMAT = 1
BROKER_CONFIG = "/etc/brokerfleet/broker.json"
BROKER_FORMAT = 1
SETTINGS = "/etc/brokerfleet/checks.json"
CHECKS_FORMAT = 1
# Root's own (mode 0700, created by the role): the workers' home /var/lib/brokerfleet, where
# the state used to be, is writable by every worker.
STATE_DIR = "/var/lib/brokerfleet-check"
GUARD_STATE = f"{STATE_DIR}/load-guard.json"
AUTOSCALE_STATE = f"{STATE_DIR}/autoscale.json"
BROKER_SAMPLE = f"{STATE_DIR}/broker-sample.json"
# {group: {"since": epoch seconds, "reason": text or None}}: what `pause` recorded. Read by the
# checks here, and by the worker_fleet role (tasks/stage.yml), which renders autostart=false.
PAUSE_STATE = f"{STATE_DIR}/paused.json"
# {"until": epoch seconds, "reason": text or None, "groups": [group]}: what `quiesce` recorded,
# {} once unquiesced or expired. Read by the checks here.
QUIESCE_STATE = f"{STATE_DIR}/quiesced.json"
# The lock cron's `flock -n` holds around the workers check (roles/fleet_checks tasks/main.yml).
WORKERS_LOCK = "/run/brokerfleet-check-workers.lock"
LOG_FILE = "/var/log/brokerfleet/check.log"
SUPERVISOR_URL = "unix:///var/run/supervisor.sock"
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
CODES = {text: code for code, text in STATUS.items()}
# supervisord states in which a worker is not coming back by itself.
DOWN = {"STOPPED", "EXITED", "FATAL", "UNKNOWN"}
# States in which supervisord stops a process when asked (STOPPING is already on its way).
STOPPABLE = {"RUNNING", "STARTING", "BACKOFF"}
# ActiveMQ usage (percent of a limit) worth a warning; at 100 producers are refused.
USAGE_WARNING = 80
# A queue this full (ready jobs, percent of its max-length) is CRITICAL: once full, a work
# queue refuses new jobs and a dead-letter queue failed ones (overflow reject-publish).
FULL_PERCENT = 90
# A work queue this full is a WARNING: still room, but its backlog is growing toward the limit.
FILLING_PERCENT = 80
# A backlog that takes longer to work off than its group's max_drain_seconds is a WARNING,
# CRITICAL from this many times longer: twice the promise is no longer a slow hour.
LONG_WAIT_CRITICAL = 2
# A broker sample older than this is no base for rates: status takes a second one.
SAMPLE_MAX_AGE = 900

log = logging.getLogger("brokerfleet-check")


# --- load guard (pure: unit-tested in tests/unit/test_check.py) --------------------------------


def guard_step(state, load, groups, high, low, runs, paused=()):
    """One run of the load guard. Returns (new state, action): action is None, or
    ("shed", group) / ("restore", group), the group losing or regaining one worker. A group
    in ``paused`` is neither shed nor given back: its count stays as it was.

    ``state`` is {"above": n, "below": n, "shed": {group: count}}; ``load`` is the load per
    CPU, or None when unknown (the guard then holds still). Counters reset after each action,
    so every further step needs ``runs`` more runs beyond the threshold: it never flaps.
    """
    shed = _clamp_shed(state.get("shed", {}), groups)
    above, below = state.get("above", 0), state.get("below", 0)
    if load is None:
        above = below = 0
    elif load > high:
        above, below = above + 1, 0
    elif load < low:
        above, below = 0, below + 1
    else:
        above = below = 0
    action = None
    if above >= runs:
        active = [g for g in groups if g["name"] not in paused]
        victim = _least_important_sheddable(active, shed)
        if victim:
            shed[victim] = shed.get(victim, 0) + 1
            action = ("shed", victim)
        above = 0
    elif below >= runs and (
        restorable := [g for g in groups if shed.get(g["name"]) and g["name"] not in paused]
    ):
        # Give back to the most important shed group first.
        group = max(restorable, key=lambda g: g["importance"])
        shed[group["name"]] -= 1
        action = ("restore", group["name"])
        below = 0
    shed = {name: count for name, count in shed.items() if count}
    return {"above": above, "below": below, "shed": shed}, action


def _least_important_sheddable(groups, shed):
    candidates = [
        g
        for g in groups
        if g["importance"] < 5 and g["processes"] - shed.get(g["name"], 0) > g["min"]
    ]
    if not candidates:
        return None

    def order(group):  # least important first; among equals, the one with most workers left
        return group["importance"], shed.get(group["name"], 0) - group["processes"]

    return min(candidates, key=order)["name"]


def _clamp_shed(shed, groups):
    """Shed counts that still fit the manifest (a re-run may have changed the groups)."""
    limits = {g["name"]: max(0, g["processes"] - g["min"]) for g in groups}
    return {name: min(count, limits[name]) for name, count in shed.items() if name in limits}


def expected_processes(groups, shed, paused=()):
    """{program: True if it should run, False if not}, over every program rendered: the first
    ``processes`` of a group's ``programs`` run, less what the guard shed; none of a group in
    ``paused``."""
    expected = {}
    for group in groups:
        keep = 0 if group["name"] in paused else group["processes"] - shed.get(group["name"], 0)
        for index, program in enumerate(group["programs"]):
            expected[program] = index < keep
    return expected


# --- autoscale (pure: unit-tested in tests/unit/test_check.py) ---------------------------------


def autoscale_step(moved, groups, backlog, horizon, paused=()):
    """One run of autoscale. Returns (new moved, action): action is None, or
    ("move", from group, to group) / ("return", from group, to group).

    ``moved`` is {group: workers gained (+) or lent (-)}; ``backlog`` {group: jobs waiting or
    in progress}, or None when unknown (it then holds still). A group whose backlog would take
    longer than ``horizon`` seconds to drain (backlog x job_seconds / workers) gains one
    worker from a group with an idle queue, up to its max and its rendered ``programs``; never
    below a lender's min. It gives one back once its backlog would drain within half the
    horizon with one worker fewer, so the two rules never undo each other. A group in
    ``paused`` neither gains, lends nor gives back: its moves stay as they were.
    """
    moved = {g["name"]: moved.get(g["name"], 0) for g in groups}
    if backlog is None:
        return moved, None
    groups = [g for g in groups if g["name"] not in paused]
    workers = {g["name"]: g["processes"] + moved[g["name"]] for g in groups}

    def drain(group, less=0):
        return (
            backlog.get(group["name"], 0)
            * group["job_seconds"]
            / max(1, workers[group["name"]] - less)
        )

    def ceiling(group):
        slots = len(group["programs"])
        return slots if group["max"] is None else min(group["max"], slots)

    for group in sorted(groups, key=drain):
        lenders = [g for g in groups if moved[g["name"]] < 0]
        if moved[group["name"]] > 0 and drain(group, less=1) < horizon / 2 and lenders:
            lender = max(lenders, key=lambda g: g["importance"])  # the most important first
            moved[group["name"]] -= 1
            moved[lender["name"]] += 1
            return moved, ("return", group["name"], lender["name"])
    needy = [g for g in groups if drain(g) > horizon and workers[g["name"]] < ceiling(g)]
    idle = [g for g in groups if not backlog.get(g["name"]) and workers[g["name"]] > g["min"]]
    if not needy or not idle:
        return moved, None
    taker = max(needy, key=drain)
    # First from an idle group that had gained workers, then from the least important.
    lender = min(idle, key=lambda g: (-max(0, moved[g["name"]]), g["importance"]))
    moved[taker["name"]] += 1
    moved[lender["name"]] -= 1
    return moved, ("move", lender["name"], taker["name"])


def group_backlog(groups, sample, now, max_age=300):
    """{group: jobs waiting or in progress on its queues} from a broker sample, or None when
    there is no sample or it is older than ``max_age`` seconds."""
    if not sample or not 0 <= now - sample["time"] <= max_age:
        return None
    queues = sample["queues"]
    return {
        group["name"]: sum(
            queues.get(q, {}).get("ready", 0) + queues.get(q, {}).get("unacked", 0)
            for q in group["queues"]
        )
        for group in groups
    }


# --- broker and status (pure: unit-tested in tests/unit/test_check.py) ---------------------


def queue_figures(sample, queues, previous=None):
    """What the check works out for each worker queue of ``queues`` (broker.json) and its
    dead-letter queue that ``sample`` lists: {name: {"rate" ((in, out) per second; None:
    unknown), "wait" (long_wait()), "fill" (fill())}}. Rates come from ``previous``, a recent
    sample (None: none, and no rates)."""
    rates = queue_rates(previous, sample) if previous else {}
    interval = sample["time"] - previous["time"] if previous else None
    watched = {queue["name"]: queue for queue in queues}
    figures = {}
    for name in [name for queue in queues for name in (queue["name"], queue["dead"])]:
        seen = sample["queues"].get(name)
        if seen is None:
            continue
        # A dead-letter queue has neither limit: its alerts are dead_letter_problem()'s.
        limits = watched.get(name, {})
        figures[name] = {
            "rate": rates.get(name),
            "wait": long_wait(limits, seen, rates.get(name), interval),
            "fill": fill(limits, seen),
        }
    return figures


def broker_problems(sample, queues, paused=None, last=None, figures=None):
    """[(code, message)] for a broker ``sample`` and the worker ``queues`` it must serve:
    [{"name", "group", "dead", ...}], ``dead`` being the queue's dead-letter queue (broker.json,
    queues.checked_queues). The jobs waiting for a group in ``paused`` ({group: pause}) are
    expected: an OK note, not a problem. ``last`` is the previous run's sample, None when there
    is none: failed jobs are judged against it (dead_letter_problem()). ``figures`` are
    queue_figures() of the sample (None: those without rates): how long a backlog waits
    (long_wait_problem()) and how full a queue is (max_length_problem())."""
    paused = paused or {}
    figures = queue_figures(sample, queues) if figures is None else figures
    problems = list(sample["alarms"])
    problems += node_problems(sample.get("nodes"), problems)
    for queue in queues:
        seen = sample["queues"].get(queue["name"])
        if seen is None:
            problems.append((WARNING, f"queue {queue['name']} does not exist: re-run the play"))
        elif seen["ready"] and queue["group"] in paused:
            problems.append(
                (
                    OK,
                    f"queue {queue['name']}: {seen['ready']} jobs waiting, as expected: "
                    + pause_text(queue["group"], paused[queue["group"]]),
                )
            )
        elif seen["ready"] and not seen["consumers"]:
            problems.append(
                (
                    CRITICAL,
                    f"queue {queue['name']}: {seen['ready']} jobs waiting and no consumer "
                    f"(workers of group {queue['group']} down or shed)",
                )
            )
        else:
            problems += long_wait_problem(queue, figures[queue["name"]]["wait"])
        if seen is not None:
            problems += max_length_problem(queue, figures[queue["name"]]["fill"])
        problems += replica_problems(queue["name"], seen)
        problems += replica_problems(queue["dead"], sample["queues"].get(queue["dead"]))
        problems += dead_letter_problem(queue, dead_letters(sample, queue, last))
    return problems


def dead_letters(sample, queue, last=None):
    """What the dead-letter queue of a worker ``queue`` (a broker.json entry) holds in
    ``sample``: {"queue" (the worker queue), "group", "jobs" (failed jobs: ready and unacked),
    "max_length" (its limit, None when it has none or broker.json does not say), "full"
    (ready jobs at FULL_PERCENT of it or more: RabbitMQ counts only ready messages
    against a max-length), "previous" (its jobs in ``last``, the previous run's sample; None
    without one) and "growing" (more jobs than then)}. A dead-letter queue a sample does not
    list holds nothing: ActiveMQ creates one at its first dead letter."""
    dead = sample["queues"].get(queue["dead"]) or {}
    jobs = dead.get("ready", 0) + dead.get("unacked", 0)
    limit = queue.get("dead_max_length")
    previous = None
    if last and isinstance(last.get("queues"), dict):
        before = last["queues"].get(queue["dead"]) or {}
        previous = before.get("ready", 0) + before.get("unacked", 0)
    return {
        "queue": queue["name"],
        "group": queue["group"],
        "jobs": jobs,
        "max_length": limit,
        "full": bool(limit) and dead.get("ready", 0) * 100 >= limit * FULL_PERCENT,
        "previous": previous,
        "growing": previous is not None and jobs > previous,
    }


def dead_letter_problem(queue, dead):
    """[(code, message)] for the failed jobs of a worker ``queue``'s dead-letter queue, as
    dead_letters() found it ([] while it is empty). CRITICAL when it is full (at
    FULL_PERCENT of its limit: it is about to refuse further failed jobs) or growing
    (more failed jobs than at the previous run: jobs are failing now); a WARNING while it holds
    the same failed jobs, until someone moves or purges them. Each says how to requeue them,
    with brokerfleet-worker on a worker host of the group."""
    jobs, limit = dead["jobs"], dead["max_length"]
    if not jobs:
        return []
    if dead["full"] or dead["growing"]:
        facts = [f"{jobs} failed jobs"]
        if dead["growing"]:
            facts.append(f"{jobs - dead['previous']} more than at the previous run")
        if dead["full"]:
            facts.append(f"at or near its limit of {limit}: once full it refuses failed jobs")
        elif limit:
            facts.append(f"limit {limit}")
        code, said = CRITICAL, ", ".join(facts)
    else:
        code, said = WARNING, f"{jobs} failed jobs to look at"
        if limit:
            said += f" (limit {limit})"
    # A plain group's jobs go back to its queue by default; a priority group names the level.
    to = f" --to {queue['level']}" if queue.get("level") else ""
    requeue = f"brokerfleet-worker move --group {queue['group']} --from dead{to}"
    return [(code, f"queue {queue['dead']}: {said}; requeue them with `{requeue}`")]


def long_wait(queue, seen, rates, interval):
    """How long the backlog of a worker ``queue`` (a broker.json entry) waits, as a sample
    ``seen`` it (None: missing), with its ``rates`` measured over ``interval`` seconds:
    {"ready", "jobs" (ready and in progress), "wait_seconds" (wait_seconds() of the jobs;
    None without rates), "at_least" (no job done in the interval: the wait is a lower bound),
    "max_drain_seconds" (the limit; None: no alert), "draining" (False while jobs wait and
    none was done nor is in progress), "code" (OK while no job waits or the wait is within the
    limit, WARNING above it, CRITICAL above LONG_WAIT_CRITICAL times it or when nothing drains
    the queue; None without a limit or without rates)}."""
    seen = seen or {}
    ready, unacked = seen.get("ready", 0), seen.get("unacked", 0)
    limit = queue.get("max_drain_seconds")
    seconds = wait_seconds(ready + unacked, rates, interval)
    idle = bool(ready and rates is not None and not rates[1])
    draining = not (idle and not unacked)
    code = None
    if limit and not ready:
        code = OK
    elif limit and seconds is not None:
        if not draining or seconds > LONG_WAIT_CRITICAL * limit:
            code = CRITICAL
        else:
            code = WARNING if seconds > limit else OK
    return {
        "ready": ready,
        "jobs": ready + unacked,
        "wait_seconds": seconds,
        "at_least": idle,
        "max_drain_seconds": limit,
        "draining": draining,
        "code": code,
    }


def wait_seconds(backlog, rates, interval):
    """Seconds the workers take to work off ``backlog`` (jobs ready and in progress) at the
    out-rate of ``rates`` measured over ``interval`` seconds: about how long a job published
    now waits. 0 when it is empty, None when the rates are unknown. When no job was done in
    the interval, one is counted, at best, right after it: the figure is then a lower bound,
    so a group of long jobs with a short backlog is not taken for a stuck one."""
    if not backlog:
        return 0
    if rates is None or not interval:
        return None
    return backlog / max(rates[1], 1 / interval)


def long_wait_problem(queue, wait):
    """[(code, message)] for a worker ``queue`` whose backlog waits too long, as long_wait()
    found it ([] within its group's max_drain_seconds, or without one). Each names the limit
    and says what to do: more workers for the group, or a look at its workers and the load
    guard."""
    if wait["code"] in (None, OK):
        return []
    limit = f"max_drain_seconds {duration(wait['max_drain_seconds'])}"
    look = f"`brokerfleet-check status` on the worker hosts of group {queue['group']}"
    if not wait["draining"]:
        said = (
            f"{wait['ready']} jobs waiting, none done since the previous run and none in "
            f"progress: nothing drains it ({limit}); check its workers with {look}"
        )
    else:
        take = "take at least" if wait["at_least"] else "take"
        # Worded apart from the WARNING, so that --quiet tells of the step up.
        over = "over twice" if wait["code"] == CRITICAL else "over"
        said = (
            f"{wait['jobs']} jobs would {take} {duration(wait['wait_seconds'])} to work off at "
            f"the rate its workers take them, {over} {limit}: add workers to group "
            f"{queue['group']} (its weight or max, or fleet_cpus), or see whether the load guard "
            f"shed them ({look})"
        )
    return [(wait["code"], f"queue {queue['name']}: {said}")]


def fill(queue, seen):
    """How full a worker ``queue`` (a broker.json entry) is, as a sample ``seen`` it:
    {"ready", "max_length" (its limit; None: none, or broker.json does not say), "percent" (of
    it, ready jobs: RabbitMQ counts only those against a max-length; None without a limit),
    "code" (None without a limit; OK, WARNING from FILLING_PERCENT, CRITICAL from
    FULL_PERCENT)}."""
    ready, limit = seen.get("ready", 0), queue.get("max_length")
    percent = ready * 100 / limit if limit else None
    code = None
    if percent is not None:
        code = (
            CRITICAL if percent >= FULL_PERCENT else WARNING if percent >= FILLING_PERCENT else OK
        )
    return {"ready": ready, "max_length": limit, "percent": percent, "code": code}


def max_length_problem(queue, filled):
    """[(code, message)] for a worker ``queue`` near its max-length, as fill() found it."""
    if filled["code"] in (None, OK):
        return []
    # Worded apart from the WARNING, so that --quiet tells of the step up.
    state = "nearly full" if filled["code"] == CRITICAL else "filling up"
    return [
        (
            filled["code"],
            f"queue {queue['name']}: {filled['ready']} jobs ready, {int(filled['percent'])}% of "
            f"its max-length {filled['max_length']}, {state}: once full, the broker refuses new "
            f"jobs (overflow reject-publish); add workers to group {queue['group']} (its weight "
            "or max, or fleet_cpus) or slow down the producers",
        )
    ]


def pause_text(group, pause):
    """'group imports paused since 2026-11-23 10:04 UTC (database upgrade)', or for a quiesce
    (held_groups()) 'group imports quiesced until 2026-11-23 10:14 UTC (broker restart)'."""
    if "until" in pause:
        return f"group {group} quiesced until {utc(pause['until'])}{said(pause.get('reason'))}"
    return f"group {group} paused since {utc(pause.get('since') or 0)}{said(pause.get('reason'))}"


def utc(seconds):
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def said(reason):
    """' (database upgrade)', or '' without a reason."""
    return f" ({reason})" if reason else ""


def alarm_message(resource, node):
    """How a resource alarm reads, whichever answer of the management API it came from."""
    return f"{resource} alarm on {node}: publishers are blocked"


def majority(count):
    """The least number out of ``count`` that is more than half: what a Raft group (a quorum
    queue) or the cluster needs to carry on."""
    return count // 2 + 1


def node_problems(nodes, reported=()):
    """[(code, message)] for the cluster's ``nodes`` as a broker host sees them (rabbitmq_sample:
    [{"name", "running", "alarms", "partitions", "drained"}]), or [] when they are unknown.

    A node not running is a WARNING while a majority of the nodes runs, CRITICAL once it does
    not (quorum queues then stop). A partition (a node that cannot see another) is CRITICAL.
    A node's alarm is CRITICAL, unless ``reported`` (the health check's) already names it. A
    drained node (maintenance mode) is a WARNING: it takes no clients and leads no queue.
    """
    if not nodes:
        return []
    problems = []
    said = {message for _, message in reported}
    down = [node["name"] for node in nodes if not node["running"]]
    running = len(nodes) - len(down)
    if down:
        message = f"{', '.join(down)} not running: {running} of {len(nodes)} nodes running"
        if running < majority(len(nodes)):
            problems.append(
                (CRITICAL, f"{message}, below a majority: quorum queues cannot take or deliver")
            )
        else:
            problems.append((WARNING, message))
    for node in nodes:
        for resource in node["alarms"]:
            if alarm_message(resource, node["name"]) not in said:
                problems.append((CRITICAL, alarm_message(resource, node["name"])))
        if node["partitions"]:
            problems.append(
                (
                    CRITICAL,
                    f"network partition: {node['name']} cannot see "
                    + ", ".join(node["partitions"]),
                )
            )
        if node.get("drained"):
            problems.append(
                (
                    WARNING,
                    f"{node['name']} is drained (maintenance mode): it takes no clients and "
                    "leads no queue until `rabbitmq-upgrade revive` on it",
                )
            )
    return problems


def replica_problems(name, queue):
    """[(code, message)] for a quorum queue whose replicas are not all online: CRITICAL below a
    majority of its members (no leader can be elected), a WARNING above. [] for any other
    queue, or one whose replicas the broker did not report: its leader reports them (with
    its statistics), and there is none while one is elected; node_problems() then still sees
    the nodes that are down."""
    if not queue or queue.get("type") != "quorum":
        return []
    if not queue.get("members") or queue.get("online") is None:
        return []
    members = len(queue["members"])
    online = len(set(queue["online"]) & set(queue["members"]))
    if online < majority(members):
        return [
            (
                CRITICAL,
                f"queue {name} has {online} of {members} replicas online: below quorum, it "
                "cannot take or deliver messages",
            )
        ]
    if online < members:
        return [(WARNING, f"queue {name}: {online} of {members} replicas online")]
    return []


def queue_rates(previous, current):
    """{queue: (in, out)} in messages per second from the counters of two samples; None for
    a queue whose counters are missing from ``previous`` or went back (reset, re-created)."""
    elapsed = current["time"] - previous["time"] if previous else 0
    rates = {}
    for name, queue in current["queues"].items():
        before = previous["queues"].get(name) if elapsed > 0 else None
        if before is None:
            rates[name] = None
            continue
        published = queue["published"] - before["published"]
        acked = queue["acked"] - before["acked"]
        rates[name] = None if min(published, acked) < 0 else (published / elapsed, acked / elapsed)
    return rates


def drain_seconds(backlog, rates):
    """Seconds until a queue's backlog is done at the current rates: 0 when it is empty,
    None when it is not draining (or its rates are unknown)."""
    if not backlog:
        return 0
    if rates is None or rates[1] <= rates[0]:
        return None
    return backlog / (rates[1] - rates[0])


def duration(seconds):
    """A drain time for a terminal: 'empty', 'not draining', '45s', '12m', '3h 05m', '2d 4h'."""
    if seconds is None:
        return "not draining"
    if seconds == 0:
        return "empty"
    minutes, hours = round(seconds / 60), round(seconds / 3600)
    if seconds < 60:
        return f"{max(1, round(seconds))}s"
    if minutes < 60:
        return f"{minutes}m"
    if hours < 48:
        return f"{minutes // 60}h {minutes % 60:02d}m"
    return f"{hours // 24}d {hours % 24}h"


def problem_signature(messages):
    """What identifies a run's problems, figures left out: a backlog that grows by a job a
    minute is the same problem, and must not mail the operator every minute."""
    return sorted({re.sub(r"\d+", "#", message) for message in messages})


# --- files: root reads and writes them, never through a symlink -------------------------------


class UnsafeDirectory(OSError):
    """A directory root must not write in: someone else could plant or swap names in it."""


def open_directory(directory, any_owner=False):
    """A descriptor of ``directory``, once it is safe for root to write in; the caller closes it.

    The rule: nobody but the directory's owner may write to it (no group or world write bit,
    sticky or not), and that owner is root (or whoever runs this, which from cron is root).
    Then nobody else can plant a symlink or swap a name in it. ``any_owner`` drops the owner
    half, for the Prometheus textfile directory, which node_exporter's own user may own: that
    user could swap names there, but since root only ever creates a fresh file (O_EXCL |
    O_NOFOLLOW) and renames it (a rename replaces a symlink, never follows it), it cannot make
    root write anywhere else. Every write is relative to this descriptor, so the directory
    checked is the one written to, whatever happens to its path meanwhile.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    info = os.fstat(fd)
    if info.st_mode & 0o022 or not (any_owner or info.st_uid in {0, os.geteuid()}):
        os.close(fd)
        owner = "writable by others than its owner" if info.st_mode & 0o022 else "not root's"
        raise UnsafeDirectory(f"{directory} is {owner}: refusing to write in it")
    return fd


def write_file(path, text, mode=0o600, any_owner=False):
    """Replace ``path`` with ``text``: a new file under a random name in the same directory
    (O_EXCL | O_NOFOLLOW: never an existing file, never through a symlink), synced, then
    renamed onto ``path``. Raises OSError (UnsafeDirectory: see open_directory) on failure."""
    directory, name = os.path.split(os.path.abspath(path))
    dir_fd = open_directory(directory, any_owner)
    try:
        temporary = f".{name}.{secrets.token_hex(8)}.tmp"  # not *.prom: node_exporter skips it
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temporary, flags, mode, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "w") as handle:
                os.fchmod(handle.fileno(), mode)  # whatever the umask
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=dir_fd)
            raise
        os.fsync(dir_fd)  # the rename itself
    finally:
        os.close(dir_fd)


def save(path, text, report=None, **how):
    """write_file(), but a refusal or a failure is logged (and a WARNING of ``report``) and
    skipped: it never ends the run. True once written."""
    try:
        write_file(path, text, **how)
        return True
    except OSError as error:
        message = f"did not write {path}: {error}"
        if report:
            report.problem(WARNING, message)
        else:
            log.error(message)
        return False


def open_log(path):
    """``path`` opened to append to, under the same rule as write_file(): in a directory only
    root writes to, never through a symlink (O_NOFOLLOW), only a regular file. A log is
    appended to (O_APPEND: whole lines, even from two checks at once), not replaced."""
    directory, name = os.path.split(os.path.abspath(path))
    dir_fd = open_directory(directory)
    try:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags | os.O_NONBLOCK, 0o600, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeDirectory(f"{path} is not a regular file: refusing to log to it")
    return os.fdopen(fd, "a")


def read_file(path):
    """The text of ``path``, a regular file, opened without following a symlink (O_NOFOLLOW)
    nor blocking on a FIFO. FileNotFoundError while it does not exist."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd) as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        return handle.read()


def read_text(path):
    """read_file(), or None when ``path`` does not exist, cannot be read by this user (status
    run by hand), or is refused (a symlink, a FIFO: logged)."""
    try:
        return read_file(path)
    except (FileNotFoundError, PermissionError):
        return None
    except OSError as error:
        log.warning(f"ignored {path}: {error}")
        return None


def read_json(path, default):
    text = read_text(path)
    return default if text is None else json.loads(text)


def write_json(path, data, report=None):
    return save(path, json.dumps(data), report)


def read_paused():
    """{group: {"since", "reason"}} of the groups paused on this host ({} when none, or when
    this user cannot read the state: status by hand)."""
    paused = read_json(PAUSE_STATE, {})
    if not isinstance(paused, dict):
        return {}
    return {group: pause for group, pause in paused.items() if isinstance(pause, dict)}


def read_quiesce():
    """What `quiesce` recorded ({"until", "reason", "groups"}), expired or not; None when
    nothing is quiesced (or this user cannot read the state)."""
    record = read_json(QUIESCE_STATE, None)
    if not isinstance(record, dict) or not isinstance(record.get("groups"), list):
        return None
    return record if isinstance(record.get("until"), int | float) else None


def held_groups(paused, quiesce, now):
    """The groups the checks keep stopped, {group: pause}: ``paused`` (the operator's, as
    read_paused() gives them), and while ``quiesce`` has not expired at ``now`` each group it
    holds as {"until", "reason"}; a group both paused and quiesced keeps its pause."""
    if not quiesce or quiesce["until"] <= now:
        return paused
    hold = {"until": quiesce["until"], "reason": quiesce.get("reason")}
    return {**dict.fromkeys(quiesce["groups"], hold), **paused}


def read_held():
    return held_groups(read_paused(), read_quiesce(), time.time())


@contextlib.contextmanager
def workers_lock():
    """Hold the lock of the workers check (cron runs it under `flock -n` on it): a command
    (pause, quiesce...) waits for a run in progress, and the runs meanwhile skip, so a run
    never acts on the pause or quiesce state of before."""
    directory, name = os.path.split(WORKERS_LOCK)
    dir_fd = open_directory(directory)
    try:
        flags = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- the host ---------------------------------------------------------------------------------


def load_per_cpu(source):
    """The 1-minute load average per CPU, from /proc/loadavg, or from ``source``: a file
    holding a load per CPU, for drills (None while it does not exist or holds no number)."""
    if source:
        text = read_text(source)
        try:
            return float(text.split()[0]) if text is not None else None
        except (IndexError, ValueError):
            # Not the text in the message: the file may be anyone's.
            log.warning(f"ignored {source}: it holds no load per CPU")
            return None
    return os.getloadavg()[0] / (os.cpu_count() or 1)


def supervisor():
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, SUPERVISOR_URL)
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


def supervisor_state():
    """RUNNING, SHUTDOWN (stopping its workers) or DOWN. A fresh connection each time: the
    transport cannot be reused after a failed request."""
    try:
        return supervisor().getState()["statename"]
    except xmlrpc.client.Fault:
        return "SHUTDOWN"
    except OSError:
        return "DOWN"


def wait_for(condition, seconds):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(1)
    return condition()


def check_workers(args, report):
    """Starts supervisord and the missing workers; the load guard sheds and restores."""
    groups = read_manifest(report)
    if groups is None:
        return
    now, quiesce = time.time(), read_quiesce()
    if quiesce and quiesce["until"] <= now:
        # The play that quiesced this host did not unquiesce it: it failed, or lost the host.
        write_json(QUIESCE_STATE, {}, report)
        report.action(
            f"the quiesce of {', '.join(quiesce['groups'])}{said(quiesce.get('reason'))} "
            f"expired at {utc(quiesce['until'])}: starting their workers again"
        )
        quiesce = None
    if supervisor_state() != "RUNNING":
        if quiesce:
            # Started, it would start the quiesced workers (autostart) amid a broker restart.
            until = utc(quiesce["until"])
            report.note(f"supervisord is down: left so while quiesced (until {until})")
            return
        # A supervisord shutting down first lets its workers finish their jobs.
        wait_for(lambda: supervisor_state() != "SHUTDOWN", 60)
        subprocess.run(["service", "supervisor", "start"], capture_output=True, check=False)
        if not wait_for(lambda: supervisor_state() == "RUNNING", 30):
            report.problem(CRITICAL, "supervisord is down and did not start")
            return
        report.action("supervisord was down: started it")
    rpc = supervisor()
    paused = held_groups(read_paused(), quiesce, now)

    moved = {}
    if args.autoscale_horizon:
        backlog = group_backlog(groups, read_json(args.backlog_source, None), time.time())
        moved, change = autoscale_step(
            read_moved(groups), groups, backlog, args.autoscale_horizon, paused
        )
        write_json(AUTOSCALE_STATE, {"manifest": groups, "moved": moved}, report)
        if change:
            verb, lender, taker = change
            report.action(f"autoscale: {verb} one worker from {lender} to {taker}")
    groups = with_moves(groups, moved)

    state = read_json(GUARD_STATE, {})
    load = load_per_cpu(args.load_source)
    state, action = guard_step(
        state, load, groups, args.load_high, args.load_low, args.runs, paused
    )
    write_json(GUARD_STATE, state, report)
    if action:
        verb, group = action
        report.action(f"load guard: {verb} one worker of {group} (load per CPU {load:.2f})")

    apply_expected(rpc, expected_processes(groups, state["shed"], paused), report, groups, paused)
    describe_workers(args, report, groups)


def apply_expected(rpc, expected, report, groups, paused, code=WARNING):
    """Starts the programs of ``expected`` that should run and are down, stops (SIGTERM: each
    finishes its job within stopwaitsecs) those that should not and run. Each an action of
    ``code`` (a WARNING from cron; OK for the commands, which were asked to)."""
    held = {
        p: "its group is " + ("quiesced" if "until" in paused[g["name"]] else "paused")
        for g in groups
        if g["name"] in paused
        for p in g["programs"]
    }
    info = {p["name"]: p for p in rpc.getAllProcessInfo()}
    for name, wanted in expected.items():
        process = info.get(name)
        if process is None:
            report.problem(CRITICAL, f"{name} is not in supervisord's configuration")
        elif wanted and process["statename"] in DOWN:
            try:
                rpc.startProcess(name, False)
                report.action(f"started {name} (was {process['statename']})", code)
            except xmlrpc.client.Fault as fault:
                report.problem(CRITICAL, f"could not start {name}: {fault.faultString}")
        elif not wanted and process["statename"] in STOPPABLE:
            try:
                rpc.stopProcess(name, False)
                report.action(f"stopped {name} ({held.get(name, 'shed by the load guard')})", code)
            except xmlrpc.client.Fault as fault:  # it ended meanwhile
                report.problem(WARNING, f"could not stop {name}: {fault.faultString}")


def read_manifest(report):
    """The groups of the fleet manifest, or None (reported) when there is none to trust."""
    manifest = read_controller_file(MANIFEST, FLEET_FORMAT, report)
    return None if manifest is None else manifest["groups"]


def read_controller_file(path, format_, report):
    """A file the play wrote for this program (the collection's plugins/module_utils/hostfiles.py
    renders each), or None, reported UNKNOWN, when it is missing or of another format: a file
    of a newer or older play is never half understood."""
    data = read_json(path, None)
    if data is None:
        report.problem(UNKNOWN, f"no {path}: has the play run on this host?")
        return None
    if not isinstance(data, dict) or data.get("format") != format_:
        found = data.get("format") if isinstance(data, dict) else None
        report.problem(
            UNKNOWN,
            f"{path} is of format {found}, this brokerfleet-check reads {format_}: run the "
            "whole play (site.yml) on this host",
        )
        return None
    return data


def read_moved(groups):
    """Autoscale's moves, while the manifest is the one they were made on (a re-run of the
    play starts again from the plan)."""
    state = read_json(AUTOSCALE_STATE, {})
    return state.get("moved", {}) if state.get("manifest") == groups else {}


def with_moves(groups, moved):
    """The groups with ``processes`` what they run after autoscale's moves (``planned``
    what the play rendered)."""
    return [
        {**g, "planned": g["processes"], "processes": g["processes"] + moved.get(g["name"], 0)}
        for g in groups
    ]


def describe_workers(args, report, groups):
    """The load, and per group the workers running against those expected. ``groups`` come
    with_moves()."""
    shed = read_json(GUARD_STATE, {}).get("shed", {})
    paused = read_held()
    report.data["load_per_cpu"] = load_per_cpu(args.load_source)
    try:
        info = {p["name"]: p for p in supervisor().getAllProcessInfo()}
    except OSError:
        info = {}
        report.problem(CRITICAL, "supervisord is down")
    for group in groups:
        names = group["programs"]
        running = sum(info.get(n, {}).get("statename") == "RUNNING" for n in names)
        pause = paused.get(group["name"])
        expected = 0 if pause else group["processes"] - shed.get(group["name"], 0)
        report.data["groups"][group["name"]] = {
            "expected": expected,
            "configured": group["planned"],
            "moved": group["processes"] - group["planned"],
            "running": running,
            "shed": shed.get(group["name"], 0),
            "paused": pause,  # {"since", "reason"}, quiesced {"until", "reason"}, or None
        }
        if running < expected and report.data["check"] == "status":
            report.problem(WARNING, f"{group['name']}: {running} of {expected} workers running")


def http_json(config, path):
    """(HTTP status, parsed body) of a management API GET; a 503 is a health check's answer."""
    request = urllib.request.Request(config["url"] + path)
    credentials = f"{config['user']}:{config['password']}".encode()
    request.add_header("Authorization", "Basic " + base64.b64encode(credentials).decode())
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        if error.code != 503:
            raise
        return error.code, json.load(error)


# The node's state /api/nodes gives (3.10): partitions lists the nodes it cannot see;
# being_drained is there from 3.8 (maintenance mode).
NODE_COLUMNS = "name,running,mem_alarm,disk_free_alarm,partitions,being_drained"
# What a quorum queue adds: its replicas' nodes, those online, and its leader's node.
QUEUE_COLUMNS = (
    "name,messages_ready,messages_unacknowledged,consumers,message_stats,type,members,online,leader"
)


def rabbitmq_nodes(config):
    """The cluster's nodes as this one sees them (/api/nodes), each {"name", "running",
    "alarms" (resources), "partitions" (nodes it cannot see), "drained"}; None when the
    management API does not show them: /api/nodes wants a user tagged monitoring (or
    administrator), and one tagged management only gets 401."""
    try:
        _, answer = http_json(config, f"/api/nodes?columns={NODE_COLUMNS}")
    except urllib.error.HTTPError as error:
        if error.code in {401, 403, 404}:
            return None
        raise
    if not isinstance(answer, list):
        return None
    return [
        {
            "name": node["name"],
            "running": bool(node.get("running")),
            # Named as the alarms health check names them (rabbit_alarm:format_as_map/1).
            "alarms": [
                resource
                for resource, key in (("memory", "mem_alarm"), ("disk space", "disk_free_alarm"))
                if node.get(key)
            ],
            "partitions": list(node.get("partitions") or []),
            "drained": bool(node.get("being_drained")),
        }
        for node in answer
    ]


def rabbitmq_sample(config):
    """Alarms, virtual hosts, the cluster's nodes and the queues, through the management API.

    /api/health/checks/alarms is cluster-wide in 3.10 (rabbit_alarm:get_alarms/1: the memory
    and disk alarms of every node, each naming its node; /api/health/checks/local-alarms is
    this node's only), so any broker host reports every node's alarm. /api/nodes' mem_alarm
    and disk_free_alarm add only what it did not name (node_problems())."""
    alarms = []
    _, answer = http_json(config, "/api/health/checks/alarms")
    for alarm in answer.get("alarms", []):
        alarms.append((CRITICAL, alarm_message(alarm["resource"], alarm["node"])))
    status, answer = http_json(config, "/api/health/checks/virtual-hosts")
    if status != 200:
        alarms.append((CRITICAL, f"virtual hosts not running: {answer.get('reason')}"))
    vhost = urllib.parse.quote(config["vhost"], safe="")
    _, answer = http_json(config, f"/api/queues/{vhost}?columns={QUEUE_COLUMNS}")
    queues = {}
    for queue in answer:
        stats = queue.get("message_stats", {})
        queues[queue["name"]] = {
            "ready": queue.get("messages_ready", 0),
            "unacked": queue.get("messages_unacknowledged", 0),
            "consumers": queue.get("consumers", 0),
            "published": stats.get("publish", 0),
            "acked": stats.get("ack", 0),
            "type": queue.get("type", "classic"),
            # A quorum queue's, from its leader: None for any other type, or while unknown.
            "members": queue.get("members"),
            "online": queue.get("online"),
            "leader": queue.get("leader"),
        }
    nodes = rabbitmq_nodes(config)
    return {"alarms": alarms, "usage": {}, "queues": queues, "nodes": nodes}


class Stomp:
    """The few STOMP 1.2 frames the statistics plugin needs, over a socket to this host.
    Python's standard library only: the broker host need not carry a STOMP client."""

    def __init__(self, config, timeout=20):
        address = (config["stomp_host"], int(config["stomp_port"]))
        self.socket = socket.create_connection(address, timeout)
        self.buffer = b""
        # CONNECT headers are sent as they are (STOMP 1.2 escapes no CONNECT header), and
        # inputs.py refuses control characters in the user and password.
        self.send_frame(
            "CONNECT",
            {
                "accept-version": "1.2",
                "host": "localhost",
                "login": config["user"],
                "passcode": config["password"],
            },
            escape=False,
        )
        command, headers, _ = self.read_frame()
        if command != "CONNECTED":
            raise RuntimeError(f"STOMP login refused: {headers.get('message', command)}")
        # Map messages reach a STOMP client only transformed (XStream, on the broker's path).
        self.reply_to = "/temp-queue/brokerfleet-check"
        subscription = {"id": "1", "destination": self.reply_to, "transformation": "jms-map-xml"}
        self.send_frame("SUBSCRIBE", subscription)

    def close(self):
        self.socket.close()

    def send_frame(self, command, headers, escape=True):
        def quote(text):
            if not escape:
                return text
            return text.replace("\\", "\\\\").replace("\n", "\\n").replace(":", "\\c")

        lines = [command] + [f"{quote(key)}:{quote(str(value))}" for key, value in headers.items()]
        self.socket.sendall(("\n".join(lines) + "\n\n").encode() + b"\0")

    def read_frame(self):
        """(command, headers, body) of the next frame; heart-beat newlines are skipped."""
        while b"\0" not in self.buffer:
            chunk = self.socket.recv(65536)
            if not chunk:
                raise RuntimeError("the broker closed the STOMP connection")
            self.buffer += chunk
        frame, _, self.buffer = self.buffer.partition(b"\0")
        head, _, body = frame.lstrip(b"\r\n").partition(b"\n\n")
        command, *lines = head.decode().split("\n")
        headers = {}
        for line in lines:
            key, _, value = line.partition(":")
            headers.setdefault(key, value)  # the first of a repeated header counts
        return command, headers, body

    def statistics(self, query):
        """The statistics plugin's answers to ``query`` (sent to /queue/<query> with a reply-to
        temporary queue), each a {key: text} map."""
        self.send_frame("SEND", {"destination": f"/queue/{query}", "reply-to": self.reply_to})
        answers = []
        while True:
            command, headers, body = self.read_frame()
            if command == "ERROR":
                raise RuntimeError(f"statistics refused: {headers.get('message')}")
            answer = stomp_map(body)
            if answer:
                answers.append(answer)
            if not answer or query == STATS_BROKER:  # one map, or a list ended by an empty one
                return answers


def stomp_map(body):
    """{key: text} of a map message as the STOMP transformation jms-map-xml renders it (XStream:
    <map><entry><string>key</string><long>7</long></entry>...</map>); {} for an empty map."""
    answer = {}
    for entry in ElementTree.fromstring(body):
        key, value = entry
        answer[key.text] = value.text or ""
    return answer


# The statistics plugin's queries: the broker as a whole; every queue, then an empty map (the
# plugin looks for its end-of-list marker inside the queried name).
STATS_BROKER = "ActiveMQ.Statistics.Broker"
STATS_QUEUES = "ActiveMQ.Statistics.Destination.>ActiveMQ.Statistics.Destination.List.End.With.Null"


def activemq_sample(config):
    """Usage of the broker's limits and its queues, from the statistics plugin over STOMP as
    the application user (JMX is not used: it would want its password on a command line)."""
    client = Stomp(config)
    try:
        (broker,) = client.statistics(STATS_BROKER)
        queues = client.statistics(STATS_QUEUES)
    finally:
        client.close()
    usage = {name: int(broker[f"{name}PercentUsage"]) for name in ("memory", "store", "temp")}
    alarms = []
    for resource, percent in usage.items():
        if percent >= 100:
            alarms.append((CRITICAL, f"{resource} limit reached: producers are refused"))
        elif percent >= USAGE_WARNING:
            alarms.append((WARNING, f"{resource} {percent}% of its limit"))
    sample = {}
    for queue in queues:
        size, in_flight = int(queue["size"]), int(queue["inflightCount"])
        name = queue["destinationName"].removeprefix("queue://")
        sample[name] = {
            "ready": max(0, size - in_flight),  # size counts dispatched jobs too
            "unacked": in_flight,
            "consumers": int(queue["consumerCount"]),
            "published": int(queue["enqueueCount"]),
            "acked": int(queue["dequeueCount"]),
        }
    return {"alarms": alarms, "usage": usage, "queues": sample}


def broker_sample(config):
    readers = {"rabbitmq": rabbitmq_sample, "activemq": activemq_sample}
    if config["kind"] not in readers:
        raise ValueError(f"{BROKER_CONFIG}: unknown broker kind {config['kind']!r}")
    return {"time": time.time(), **readers[config["kind"]](config)}


def read_broker(report):
    """(config, sample) of this host's broker, or (config, None) when it did not answer."""
    config = read_controller_file(BROKER_CONFIG, BROKER_FORMAT, report)
    if config is None:
        return None, None
    try:
        return config, broker_sample(config)
    except (OSError, ValueError, RuntimeError, subprocess.SubprocessError) as error:
        where = config.get("url") or f"{config['stomp_host']}:{config['stomp_port']} (STOMP)"
        report.problem(CRITICAL, f"{config['kind']} did not answer at {where}: {error}")
        return config, None


def check_broker(args, report):
    config, sample = read_broker(report)
    if sample is None:
        return
    previous = read_json(BROKER_SAMPLE, None)
    write_json(BROKER_SAMPLE, sample, report)
    fresh = previous and 0 < sample["time"] - previous["time"] <= SAMPLE_MAX_AGE
    # Failed jobs are compared with the previous run's sample however old: cron may run the
    # check every 30 minutes (fleet_checks_minute), and a count, unlike a rate, does not age.
    describe_broker(report, config, sample, previous if fresh else None, last=previous)


def describe_broker(report, config, sample, previous, last=None):
    """Reports the broker's problems and fills in report.data["broker"]: rates come from
    ``previous`` (a recent sample, or None), failed jobs are compared with ``last`` (the
    previous run's sample, whatever its age; ``previous`` when not given)."""
    last = previous if last is None else last
    figures = queue_figures(sample, config["queues"], previous)
    for code, message in broker_problems(sample, config["queues"], read_held(), last, figures):
        if code == OK:
            report.note(message)
        else:
            report.problem(code, message)
    report.data["broker"] = {
        "kind": config["kind"],
        "usage": sample["usage"],
        # RabbitMQ's cluster as this node sees it (rabbitmq_nodes()); None when unknown.
        "nodes": sample.get("nodes"),
        "queues": {},
    }
    # Dead-letter queues only while they hold failed jobs.
    found = sample["queues"]
    dead = [q["dead"] for q in config["queues"] if found.get(q["dead"], {}).get("ready")]
    for name in [q["name"] for q in config["queues"]] + dead:
        queue = found.get(name)
        if queue is None:
            continue
        rate, wait, filled = (figures[name][key] for key in ("rate", "wait", "fill"))
        backlog = queue["ready"] + queue["unacked"]
        report.data["broker"]["queues"][name] = {
            **{key: queue[key] for key in ("ready", "unacked", "consumers")},
            "in_per_second": None if rate is None else round(rate[0], 2),
            "out_per_second": None if rate is None else round(rate[1], 2),
            "drain_seconds": drain_seconds(backlog, rate),
            # The long-wait alert (long_wait()): the backlog at the out-rate, the group's
            # limit, and the alert's state (OK, WARNING, CRITICAL; None: no limit or no rates).
            "wait_seconds": wait["wait_seconds"],
            "max_drain_seconds": wait["max_drain_seconds"],
            "long_wait": STATUS.get(wait["code"]),
            # The near-max-length alert (fill()), its state as the long wait's.
            "max_length": filled["max_length"],
            "near_max_length": STATUS.get(filled["code"]),
            # A quorum queue's replicas (nodes), those online and its leader; else None.
            **{key: queue.get(key) for key in ("members", "online", "leader")},
        }
    # Every watched dead-letter queue, empty ones included (dead_letters()).
    report.data["broker"]["dead_letters"] = {
        queue["dead"]: dead_letters(sample, queue, last) for queue in config["queues"]
    }


def status(args, report):
    """What this host runs, with rates from the cron check's last broker sample (or a second
    sample --interval seconds later). Reads only."""
    if os.path.exists(BROKER_CONFIG) and not args.no_broker:
        config, sample = read_broker(report)
        if sample:
            previous = read_json(BROKER_SAMPLE, None)
            if previous is None or not 5 <= sample["time"] - previous["time"] <= SAMPLE_MAX_AGE:
                time.sleep(args.interval)
                previous, sample = sample, broker_sample(config)
            describe_broker(report, config, sample, previous)
    if os.path.exists(MANIFEST):
        groups = read_manifest(report)
        describe_workers(args, report, with_moves(groups, read_moved(groups)))


def known_groups(report):
    """(the manifest's groups, or [] on a host without workers; every group name this host
    knows: those and the groups of broker.json's queues)."""
    groups = (read_manifest(report) or []) if os.path.exists(MANIFEST) else []
    names = {g["name"] for g in groups}
    if os.path.exists(BROKER_CONFIG):
        config = read_controller_file(BROKER_CONFIG, BROKER_FORMAT, report) or {}
        names |= {queue["group"] for queue in config.get("queues", [])}
    return groups, names


def stop_and_wait(rpc, names, report):
    """Waits until none of ``names`` runs; supervisord's stopwaitsecs bounds each stop."""

    def running():
        info = {p["name"]: p["statename"] for p in rpc.getAllProcessInfo()}
        return [name for name in names if info.get(name) in STOPPABLE | {"STOPPING"}]

    if running():
        print(f"waiting for {', '.join(running())} to finish their jobs and stop...", flush=True)
    try:
        while running():
            time.sleep(1)
    except KeyboardInterrupt:
        report.problem(WARNING, "stopped waiting: the workers still stop (they had SIGTERM)")
        return False
    return True


def pause_group(args, report):
    """Records ``args.group`` as paused, then stops its workers gracefully and waits."""
    groups, names = known_groups(report)
    if args.group not in names:
        known = ", ".join(sorted(names)) or "none (has the play run on this host?)"
        report.problem(CRITICAL, f"no group {args.group!r} on this host; it knows {known}")
        return
    paused = read_paused()
    pause = paused.get(args.group) or {"since": int(time.time()), "reason": None}
    if args.reason:
        pause["reason"] = args.reason
    paused[args.group] = pause
    mine = [g for g in groups if g["name"] == args.group]
    with workers_lock():
        if not write_state(PAUSE_STATE, paused, "record the pause", report):
            return
        report.action(pause_text(args.group, pause), OK)
        if not mine:
            report.note(f"no worker of {args.group} runs on this host: nothing to stop")
            return
        wait = stop_groups(mine, paused, report)
    if wait and wait():
        report.note(f"{args.group}: every worker stopped; `brokerfleet-check resume {args.group}`")


def resume_group(args, report):
    """Forgets the pause of ``args.group`` and starts its workers, less what the guard shed.
    A group paused here and since removed from the play can be resumed (forgotten) too."""
    groups, names = known_groups(report)
    if args.group not in names | set(read_paused()):
        known = ", ".join(sorted(names)) or "none (has the play run on this host?)"
        report.problem(CRITICAL, f"no group {args.group!r} on this host; it knows {known}")
        return
    paused = read_paused()
    pause = paused.pop(args.group, None)
    if pause is None:
        report.note(f"group {args.group} is not paused")
        return
    with workers_lock():
        if not write_state(PAUSE_STATE, paused, "forget the pause", report):
            return
        report.action(f"resumed {pause_text(args.group, pause).removeprefix('group ')}", OK)
        # A group quiesced as well stays stopped until the quiesce ends.
        held = held_groups(paused, read_quiesce(), time.time())
        start_groups(groups, [args.group], held, report)


def quiesce_fleet(args, report):
    """Records the groups of this host that are not paused as quiesced, stops their workers
    gracefully and waits; then holds them ``args.seconds`` from there."""
    groups, _ = known_groups(report)
    with workers_lock():
        paused = read_paused()
        mine = [g for g in groups if g["name"] not in paused]
        if not mine:
            report.note("no worker group runs unpaused on this host: nothing to quiesce")
            return
        quiesce = {
            "until": int(time.time()) + args.seconds,
            "reason": args.reason or None,
            "groups": [g["name"] for g in mine],
        }
        if not write_state(QUIESCE_STATE, quiesce, "record the quiesce", report):
            return
        held = held_groups(paused, quiesce, time.time())
        report.action(f"quiesced {', '.join(quiesce['groups'])}{said(args.reason)}", OK)
        wait = stop_groups(mine, held, report)
        # Still under the lock, so that no workers check ends the quiesce while jobs as long
        # as a group's max_job_seconds finish: the seconds count from when they stopped.
        if wait and wait():
            quiesce["until"] = int(time.time()) + args.seconds
            if write_state(QUIESCE_STATE, quiesce, "record the quiesce", report):
                report.note(
                    f"every worker stopped; held until {utc(quiesce['until'])} or until "
                    "`brokerfleet-check unquiesce`"
                )


def unquiesce_fleet(args, report):
    """Forgets the quiesce and starts its groups' workers, but those paused meanwhile."""
    groups, _ = known_groups(report)
    with workers_lock():
        quiesce = read_quiesce()
        if quiesce is None:
            report.note("nothing is quiesced on this host")
            return
        if not write_state(QUIESCE_STATE, {}, "forget the quiesce", report):
            return
        names = ", ".join(quiesce["groups"])
        report.action(f"unquiesced {names}{said(quiesce.get('reason'))}", OK)
        start_groups(groups, quiesce["groups"], read_paused(), report)


def write_state(path, data, what, report):
    """write_file() of what a command must record; False, reported UNKNOWN, when it could not
    ("could not <what> in <path>")."""
    try:
        write_file(path, json.dumps(data))
        return True
    except OSError as error:
        report.problem(UNKNOWN, f"could not {what} in {path}: {error}")
        return False


def stop_groups(groups, held, report):
    """SIGTERMs the running programs of ``groups`` (each of them in ``held``) all at once:
    each worker finishes its job within stopwaitsecs. Returns what waits for them (True once
    they all stopped), or None when supervisord is down (a WARNING: nothing runs)."""
    rpc = supervisor()
    expected = expected_processes(groups, {}, held)
    try:
        apply_expected(rpc, expected, report, groups, held, OK)
    except OSError:
        report.problem(WARNING, "supervisord is down: the workers check keeps them stopped")
        return None
    return lambda: stop_and_wait(rpc, list(expected), report)


def start_groups(groups, names, held, report):
    """Starts the workers of the groups ``names`` among ``groups`` (the manifest's): after
    autoscale's moves, less what the load guard shed, and none of a group in ``held`` (a note
    says why)."""
    groups = with_moves(groups, read_moved(groups))
    mine = [g for g in groups if g["name"] in names]
    for group in mine:
        if group["name"] in held:
            report.note(f"{pause_text(group['name'], held[group['name']])}: not started")
    if not mine:
        return
    shed = read_json(GUARD_STATE, {}).get("shed", {})
    try:
        rpc = supervisor()
        apply_expected(rpc, expected_processes(mine, shed, held), report, mine, held, OK)
    except OSError:
        report.problem(WARNING, "supervisord is down: the next workers check starts it")


class Report:
    def __init__(self, check):
        self.code = OK
        self.data = {"check": check, "actions": [], "problems": [], "notes": [], "groups": {}}

    def action(self, message, code=WARNING):
        log.warning(message)
        self.data["actions"].append(message)
        self.code = max(self.code, code)

    def note(self, message):
        """Worth saying, not a problem: the backlog of a paused group."""
        if self.data["check"] != "status":
            log.info(message)
        self.data["notes"].append(message)

    def problem(self, code, message):
        if self.data["check"] != "status":
            log.log(logging.ERROR if code > WARNING else logging.WARNING, message)
        self.data["problems"].append(message)
        self.code = max(self.code, code)

    def text(self):
        lines = [f"brokerfleet {self.data['check']} {STATUS[self.code]}"]
        messages = self.data["problems"] + self.data["actions"] + self.data["notes"]
        lines += [f"  {m}" for m in messages]
        broker = self.data.get("broker")
        if broker:
            usage = ", ".join(f"{key} {value}%" for key, value in broker["usage"].items())
            lines.append(f"  {broker['kind']}" + (f": {usage} of limits" if usage else ""))
            lines.append(
                f"  {'queue':<28} {'ready':>7} {'unacked':>7} {'consumers':>9} "
                f"{'in/s':>7} {'out/s':>7}  drains in"
            )
            for name, queue in broker["queues"].items():
                rates = [queue["in_per_second"], queue["out_per_second"]]
                rates = ["-" if rate is None else f"{rate:.1f}" for rate in rates]
                unknown = queue["drain_seconds"] is None and rates[1] == "-"
                drain = "-" if unknown else duration(queue["drain_seconds"])
                lines.append(
                    f"  {name:<28} {queue['ready']:>7} {queue['unacked']:>7} "
                    f"{queue['consumers']:>9} {rates[0]:>7} {rates[1]:>7}  {drain}"
                )
            lines += cluster_lines(broker)
        if "load_per_cpu" in self.data:
            load = self.data["load_per_cpu"]
            # Unknown: the load source of the settings (a drill's) holds no number.
            lines.append("  load per CPU " + ("unknown" if load is None else f"{load:.2f}"))
        for name, group in self.data["groups"].items():
            notes = [f"{group['shed']} shed"] if group["shed"] else []
            if group["moved"]:
                notes.append(f"{group['moved']:+d} moved by autoscale")
            if group.get("paused"):
                notes.append(pause_text(name, group["paused"]).removeprefix(f"group {name} "))
            lines.append(
                f"  {name}: {group['running']} running of {group['expected']} expected"
                + (f" ({', '.join(notes)})" if notes else "")
            )
        return "\n".join(lines)

    def prometheus(self):
        check = label(self.data["check"])
        lines = [f"brokerfleet_check_status{{check={check}}} {self.code}"]
        if self.data.get("load_per_cpu") is not None:
            lines.append(f"brokerfleet_load_per_cpu {self.data['load_per_cpu']:.3f}")
        for name, group in self.data["groups"].items():
            # moved: workers autoscale gave (+) or took (-), 0 without a move.
            for key in ("expected", "running", "shed", "moved"):
                lines.append(f"brokerfleet_workers_{key}{{group={label(name)}}} {group[key]}")
            paused = int(bool(group.get("paused")))
            lines.append(f"brokerfleet_group_paused{{group={label(name)}}} {paused}")
        broker = self.data.get("broker", {})
        for resource, percent in broker.get("usage", {}).items():
            lines.append(
                f"brokerfleet_broker_usage_percent{{resource={label(resource)}}} {percent}"
            )
        if broker.get("nodes"):
            running = sum(node["running"] for node in broker["nodes"])
            lines.append(f"brokerfleet_broker_nodes {len(broker['nodes'])}")
            lines.append(f"brokerfleet_broker_nodes_running {running}")
        for name, queue in broker.get("queues", {}).items():
            # RabbitMQ's own exporter has a queue's depth and consumers (rabbitmq_prometheus,
            # /metrics/detailed); ActiveMQ has no exporter.
            if broker.get("kind") != "rabbitmq":
                for key in ("ready", "unacked", "consumers"):
                    lines.append(f"brokerfleet_queue_{key}{{queue={label(name)}}} {queue[key]}")
            lines += rate_metrics(name, queue)
            lines += alert_metrics(name, queue)
        for name, dead in broker.get("dead_letters", {}).items():
            queue = label(name)
            lines.append(f"brokerfleet_dead_letter_jobs{{queue={queue}}} {dead['jobs']}")
            lines.append(f"brokerfleet_dead_letter_full{{queue={queue}}} {int(dead['full'])}")
            if dead["max_length"]:
                lines.append(
                    f"brokerfleet_dead_letter_max_length{{queue={queue}}} {dead['max_length']}"
                )
        return "\n".join(lines) + "\n"


def rate_metrics(name, queue):
    """A queue's in and out rates (jobs per second since the previous sample), once known.
    rabbitmq_prometheus counts publishes and acks only per channel (a series per worker
    channel, gone with it), and ActiveMQ has no exporter."""
    return [
        f"brokerfleet_queue_{key}{{queue={label(name)}}} {queue[key]}"
        for key in ("in_per_second", "out_per_second")
        if queue.get(key) is not None
    ]


def alert_metrics(name, queue):
    """A worker queue's long-wait and near-max-length figures, each only when known, and each
    alert's state as a Nagios code (0 OK, 1 WARNING, 2 CRITICAL) while it has a limit."""
    lines = []
    for key in ("wait_seconds", "max_drain_seconds", "max_length"):
        if queue.get(key) is not None:
            lines.append(f"brokerfleet_queue_{key}{{queue={label(name)}}} {queue[key]}")
    for alert in ("long_wait", "near_max_length"):
        code = CODES.get(queue.get(alert))
        if code is not None:
            lines.append(f"brokerfleet_queue_{alert}_status{{queue={label(name)}}} {code}")
    return lines


def cluster_lines(broker):
    """The status text's cluster section: each node, running or not, and what ails it; per
    quorum queue its leader and replicas online. Nothing for a single node, nor when neither
    the nodes nor any queue's replicas show a cluster."""
    nodes = broker.get("nodes")
    quorum = {
        name: queue for name, queue in broker["queues"].items() if queue.get("members") is not None
    }
    if nodes is None and not any(len(queue["members"]) > 1 for queue in quorum.values()):
        return []
    if nodes is not None and len(nodes) < 2:
        return []
    if nodes is None:
        lines = ["  cluster nodes unknown: /api/nodes wants a user tagged monitoring"]
    else:
        running = sum(node["running"] for node in nodes)
        lines = [f"  cluster: {running} of {len(nodes)} nodes running"]
    for node in nodes or []:
        notes = ["running" if node["running"] else "NOT RUNNING"]
        notes += [f"{resource} alarm" for resource in node["alarms"]]
        if node["partitions"]:
            notes.append("cannot see " + ", ".join(node["partitions"]))
        if node.get("drained"):
            notes.append("drained")
        lines.append(f"  {node['name']:<28} {', '.join(notes)}")
    if quorum:
        lines.append(f"  {'quorum queue':<28} {'leader':<24} replicas online")
    for name, queue in quorum.items():
        online = "-" if queue["online"] is None else len(queue["online"])
        leader = queue["leader"] or "-"
        lines.append(f"  {name:<28} {leader:<24} {online}/{len(queue['members'])}")
    return lines


def label(value):
    """A Prometheus label value, quoted and escaped as the text exposition format wants it:
    backslash, double quote and newline as \\\\, \\" and \\n. Queue and group names are
    anyone's choice, and one newline would forge a metric."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def setup_environment():
    # cron's PATH (/usr/bin:/bin) lacks service(8), which is in /usr/sbin.
    os.environ["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def setup_logging():
    log.setLevel(logging.INFO)
    if os.path.exists("/dev/log"):
        syslog = logging.handlers.SysLogHandler(address="/dev/log")
        syslog.setFormatter(logging.Formatter("brokerfleet-check: %(message)s"))
        log.addHandler(syslog)
    try:
        log.addHandler(logging.StreamHandler(open_log(LOG_FILE)))
        log.handlers[-1].setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    except UnsafeDirectory as error:
        log.error(f"not logging to {LOG_FILE}: {error}")
    except OSError:
        pass  # not root (status by hand), or no log directory


CHECKS = {"workers": check_workers, "broker": check_broker, "status": status}
# What an operator runs by hand: no settings, no Prometheus textfile, no alert, no news.
COMMANDS = {
    "pause": pause_group,
    "resume": resume_group,
    "quiesce": quiesce_fleet,
    "unquiesce": unquiesce_fleet,
}

# What checks.json sets, each overridden by its option on the command line.
SETTINGS_KEYS = (
    "load_high",
    "load_low",
    "runs",
    "autoscale_horizon",
    "alert_command",
    "load_source",
    "backlog_source",
)


def apply_settings(args, report):
    """Fill in from --settings (checks.json) what the command line left unset. False, reported
    UNKNOWN, when the workers or broker check has no settings to run by; status runs without
    them (a user other than root cannot read them)."""
    quiet = Report(args.check) if args.check == "status" else report
    settings = read_controller_file(args.settings, CHECKS_FORMAT, quiet) or {}
    for key in SETTINGS_KEYS:
        if getattr(args, key) is None:
            setattr(args, key, settings.get(key))
    args.backlog_source = args.backlog_source or BROKER_SAMPLE
    args.autoscale_horizon = args.autoscale_horizon or 0
    if args.prometheus is None and settings.get("prometheus_dir") and args.check != "status":
        args.prometheus = f"{settings['prometheus_dir']}/brokerfleet-{args.check}.prom"
    return bool(settings) or args.check == "status"


def arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=list(CHECKS) + list(COMMANDS))
    parser.add_argument("group", nargs="?", help="pause, resume: the worker group")
    parser.add_argument("--reason", help="pause, quiesce: why, shown while the groups are held")
    parser.add_argument(
        "--for",
        dest="seconds",
        type=int,
        metavar="SECONDS",
        help="quiesce: hold the groups stopped this long once their workers stopped",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="print only news (see above)")
    parser.add_argument("--settings", default=SETTINGS, help="the settings file (see above)")
    # Each option below overrides its setting in --settings, which has them all.
    parser.add_argument("--prometheus", metavar="FILE", help="also write a Prometheus textfile")
    parser.add_argument("--alert-command", help="run with the report on stdin on news")
    parser.add_argument("--load-high", type=float, help="load per CPU to shed at")
    parser.add_argument("--load-low", type=float, help="load per CPU to restore at")
    parser.add_argument("--runs", type=int, help="consecutive runs before acting")
    parser.add_argument("--load-source", help="file with a load per CPU to use (drills)")
    parser.add_argument(
        "--interval", type=float, default=10, help="status: seconds between two broker samples"
    )
    parser.add_argument(
        "--no-broker",
        action="store_true",
        help="status: leave the broker out (make status asks the first broker host only)",
    )
    parser.add_argument(
        "--autoscale-horizon",
        type=float,
        help="workers: move workers toward backlogs longer than this many seconds (0: off)",
    )
    parser.add_argument("--backlog-source", help="broker sample autoscale reads (drills)")
    args = parser.parse_args(argv)
    if (args.check in {"pause", "resume"}) != (args.group is not None):
        parser.error("pause and resume take a group, and only they do")
    if args.reason is not None and args.check not in {"pause", "quiesce"}:
        parser.error("--reason goes with pause and quiesce")
    if (args.check == "quiesce") != (args.seconds is not None):
        parser.error("quiesce takes --for SECONDS, and only it does")
    if args.seconds is not None and args.seconds < 1:
        parser.error("--for takes a number of seconds above 0")
    if args.reason is not None:
        args.reason = " ".join(args.reason.split())  # one line, in logs and reports
    return args


def main(argv):
    args = arguments(argv)
    setup_environment()
    setup_logging()
    report = Report(args.check)
    try:
        if args.check in COMMANDS and os.geteuid() != 0:
            report.problem(UNKNOWN, f"{args.check} runs as root: {STATE_DIR} is root's")
        elif args.check in COMMANDS:
            COMMANDS[args.check](args, report)
        elif apply_settings(args, report):
            CHECKS[args.check](args, report)
    except Exception as error:  # noqa: BLE001 - an UNKNOWN result, not a traceback in cron mail
        report.problem(UNKNOWN, f"the check failed: {error!r}")

    news = True
    if args.check in CHECKS and args.check != "status":
        last_path = f"{STATE_DIR}/last-{args.check}.json"
        signature = problem_signature(report.data["problems"])
        news = report.data["actions"] or signature != read_json(last_path, {}).get("problems", [])
        write_json(last_path, {"problems": signature}, report)
    output = (
        json.dumps({**report.data, "status": STATUS[report.code]}) if args.json else report.text()
    )
    if news or not args.quiet:
        print(output)
    if args.prometheus:
        save(args.prometheus, report.prometheus(), mode=0o644, any_owner=True)
    if args.alert_command and news and args.check in CHECKS and args.check != "status":
        # The operator's own command line (fleet_checks_alert_command), run as written; the
        # report, queue names and all, only ever goes to its stdin, never into the command.
        subprocess.run(args.alert_command, shell=True, input=report.text(), text=True, check=False)
    return report.code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
