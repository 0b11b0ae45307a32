"""Sizing arithmetic for a broker and its worker fleet.

Plain Python with no Ansible import: the filter plugin in filter_plugins/ adapts these functions,
pytest and hypothesis test them directly. Every number the bundle derives from a host is
computed here, so a newcomer finds each decision in one place.
"""

from __future__ import annotations

import heapq
import math
import re
from urllib.parse import quote

from brokerfleet import queues

GROUP_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

# Defaults of the worker-group contract (README "Worker group contract").
GROUP_DEFAULTS = {
    "weight": 1,
    "min": 1,
    "max": None,
    "job_seconds": 5,
    "importance": 3,
    "environment": {},
    "recycle_after": None,
    "directory": "/",
    "user": "brokerfleet",
    "priority_levels": None,
}

# Largest prefetch handed to a consumer of very short jobs. RabbitMQ's guide to consumer
# prefetch finds 100-300 gives the best throughput for tiny jobs; the low end keeps the
# burst that is redelivered when a worker dies small.
MAX_PREFETCH = 100


def group_errors(groups) -> list[str]:
    """Every contract violation in ``worker_groups``, each naming the variable and the group.

    An empty list means the groups are valid. Types are checked by the role's argument spec;
    these are the rules a spec cannot express.
    """
    if not isinstance(groups, list):
        return [f"worker_groups must be a list of groups, got {type(groups).__name__}"]
    errors = []
    seen = set()
    for index, group in enumerate(groups):
        if not isinstance(group, dict):
            errors.append(f"worker_groups[{index}] must be a mapping, got {group!r}")
            continue
        name = group.get("name")
        where = f"worker_groups[{index}] (name {name!r})"
        if not isinstance(name, str) or not GROUP_NAME.match(name):
            errors.append(f"{where}: name must match {GROUP_NAME.pattern}")
        elif name in seen:
            errors.append(f"{where}: name is used by an earlier group; names must be unique")
        seen.add(name)
        if not group.get("command"):
            errors.append(f"{where}: command is required")
        weight = group.get("weight", GROUP_DEFAULTS["weight"])
        if not _is_number(weight) or weight <= 0:
            errors.append(f"{where}: weight must be a number > 0, got {weight!r}")
        low = group.get("min", GROUP_DEFAULTS["min"])
        if not isinstance(low, int) or isinstance(low, bool) or low < 0:
            errors.append(f"{where}: min must be an integer >= 0, got {low!r}")
            low = 0
        high = group.get("max")
        if high is not None and (not isinstance(high, int) or isinstance(high, bool)):
            errors.append(f"{where}: max must be an integer, got {high!r}")
        elif high is not None and high < low:
            errors.append(f"{where}: max ({high}) must be >= min ({low})")
        seconds = group.get("job_seconds", GROUP_DEFAULTS["job_seconds"])
        if not _is_number(seconds) or seconds <= 0:
            errors.append(f"{where}: job_seconds must be a number > 0, got {seconds!r}")
        importance = group.get("importance", GROUP_DEFAULTS["importance"])
        if importance not in (1, 2, 3, 4, 5):
            errors.append(f"{where}: importance must be 1 (shed first) to 5 (never shed)")
        if group.get("priority_levels") is not None:
            errors.extend(f"{where}: {e}" for e in queues.priority_errors(group["priority_levels"]))
    return errors


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def host_cpus(nproc=None, vcpus=None, override=None) -> int:
    """CPUs the fleet may use: ``fleet_cpus`` if given, else the host's nproc, else its vCPUs."""
    for value in (override, nproc, vcpus):
        if value not in (None, "", 0):
            cpus = int(value)
            if cpus < 1:
                raise ValueError(f"fleet_cpus must be >= 1, got {value!r}")
            return cpus
    raise ValueError("cannot tell the host's CPUs: set fleet_cpus")


def worker_budget(cpus, workers_per_cpu, memory_mb, worker_memory_mb, reserve_mb=0) -> int:
    """Worker processes a host can run: CPUs x workers_per_cpu, capped by the memory left
    after ``reserve_mb`` (the OS, and a broker on the same host) at ``worker_memory_mb`` each.
    """
    if workers_per_cpu <= 0:
        raise ValueError(f"workers_per_cpu must be > 0, got {workers_per_cpu!r}")
    if worker_memory_mb <= 0:
        raise ValueError(f"worker_memory_mb must be > 0, got {worker_memory_mb!r}")
    by_cpu = math.floor(cpus * workers_per_cpu)
    by_memory = max(0, math.floor((memory_mb - reserve_mb) / worker_memory_mb))
    return min(by_cpu, by_memory)


def split_budget(budget: int, groups) -> dict[str, int]:
    """Share ``budget`` worker processes across groups by weight, within each group's min/max.

    Every group starts at its min; each further process goes to the group with the highest
    weight / (processes + 1) that is below its max (the D'Hondt method), so the split is
    proportional, deterministic, and a heavier group never gets fewer processes than a lighter
    one with the same bounds. When every group is at its max, the rest of the budget is unused.
    """
    groups = [{**GROUP_DEFAULTS, **g} for g in groups]
    mins = sum(g["min"] for g in groups)
    if mins > budget:
        wanted = ", ".join(f"{g['name']}={g['min']}" for g in groups if g["min"])
        raise ValueError(
            f"worker_groups ask for {mins} processes at their min ({wanted}) but this host's "
            f"budget is {budget} (fleet_cpus x workers_per_cpu, capped by worker_memory_mb): "
            "lower a min, or raise workers_per_cpu or fleet_cpus"
        )
    counts = {g["name"]: g["min"] for g in groups}
    # Heap of (-quotient, -weight, index): ties go to the heavier group, then the earlier one.
    heap = []
    for index, g in enumerate(groups):
        if g["max"] is None or counts[g["name"]] < g["max"]:
            heap.append((-g["weight"] / (counts[g["name"]] + 1), -g["weight"], index))
    heapq.heapify(heap)
    left = budget - mins
    while left > 0 and heap:
        _, _, index = heapq.heappop(heap)
        g = groups[index]
        counts[g["name"]] += 1
        left -= 1
        if g["max"] is None or counts[g["name"]] < g["max"]:
            heapq.heappush(heap, (-g["weight"] / (counts[g["name"]] + 1), -g["weight"], index))
    return counts


def prefetch_for(job_seconds) -> int:
    """Messages a consumer may hold unacknowledged (AMQP basic.qos prefetch_count).

    Jobs of a second or more get 1: a prefetched message waits behind a long job while other
    workers sit idle (RabbitMQ's and Celery's advice for long tasks). Shorter jobs get about one
    second of work in hand, so the network round trip does not idle the worker, up to
    MAX_PREFETCH.
    """
    if job_seconds >= 1:
        return 1
    return min(MAX_PREFETCH, math.ceil(1 / job_seconds))


def stop_wait_seconds(job_seconds) -> int:
    """supervisord ``stopwaitsecs``: time a worker gets after SIGTERM to finish its job and ack.

    Twice the typical job plus 10 s, so a job that runs long is still not killed mid-way.
    """
    return math.ceil(2 * job_seconds) + 10


def memory_watermark(host_memory_mb, broker_memory_mb=None, fraction=0.4) -> dict:
    """RabbitMQ ``vm_memory_high_watermark`` and a matching ``disk_free_limit``.

    Without a memory limit for the broker the watermark is relative (``fraction`` of the RAM the
    node detects, 0.4 being RabbitMQ's default). With ``broker_memory_mb`` (a cgroup limit, or
    the share left beside workers) it is absolute: ``fraction`` of that limit, since the node
    can briefly use up to twice the watermark while it pages messages out. ``disk_free_limit``
    is at least the watermark, as RabbitMQ's production checklist recommends, so that the
    node can always page its memory out to disk.
    """
    if not 0.1 <= fraction <= 0.9:
        raise ValueError(f"rabbitmq_memory_fraction must be within 0.1-0.9, got {fraction!r}")
    if broker_memory_mb:
        if broker_memory_mb > host_memory_mb:
            raise ValueError(
                f"rabbitmq_memory_limit_mb ({broker_memory_mb}) exceeds the host's RAM "
                f"({host_memory_mb} MB)"
            )
        watermark_mb = math.floor(broker_memory_mb * fraction)
        return {"relative": None, "absolute_mb": watermark_mb, "disk_free_limit_mb": watermark_mb}
    watermark_mb = math.ceil(host_memory_mb * fraction)
    return {"relative": fraction, "absolute_mb": None, "disk_free_limit_mb": watermark_mb}


def group_prefetch(group) -> int:
    """Prefetch of one group's consumers: by job length, and 1 for a group with priority
    levels, whose workers hold one consumer per level queue: more would strand jobs of one
    level on a worker busy with another (the ActiveMQ failure: 36 of 750 jobs, then a stall).
    """
    if group.get("priority_levels"):
        return 1
    return prefetch_for(group.get("job_seconds", GROUP_DEFAULTS["job_seconds"]))


def openwire_prefetch(prefetch: int) -> int:
    """``jms.prefetchPolicy.all`` for JMS (OpenWire) clients: 0 where a consumer should hold
    nothing in advance (slow jobs, priority levels), so each receive() pulls one message
    the moment the worker is free; else the computed prefetch."""
    return 0 if prefetch <= 1 else prefetch


def activemq_queue_policies(groups) -> list[dict]:
    """One ActiveMQ ``policyEntry`` per consumed queue: ``queuePrefetch`` from the group (the
    smallest when groups share a queue), and ``prioritized`` for priority-level queues."""
    policies = {}
    for group in groups:
        prefetch = group_prefetch(group)
        for queue in queues.consumed_queues(group):
            entry = policies.setdefault(
                queue,
                {"queue": queue, "prefetch": prefetch, "prioritized": False},
            )
            entry["prefetch"] = min(entry["prefetch"], prefetch)
            entry["prioritized"] |= bool(group.get("priority_levels"))
    return list(policies.values())


def fleet_plan(groups, budget: int, autoscale: bool = False) -> list[dict]:
    """The groups with their defaults filled in and what the bundle derives for each:
    ``processes``, ``prefetch``, ``openwire_prefetch``, ``stopwaitsecs``, the queues its
    workers poll (``poll_order``, ``poll_when_idle``), and ``slots``: the supervisord programs
    rendered for it. With ``autoscale`` a group may gain workers from idle groups, so it gets
    a program for each worker it may reach (its max, or the whole budget); only the first
    ``processes`` start by themselves.
    """
    errors = group_errors(groups)
    if errors:
        raise ValueError("; ".join(errors))
    counts = split_budget(budget, groups)
    plan = []
    for group in groups:
        g = {**GROUP_DEFAULTS, "queue": group["name"], **group}
        g["processes"] = counts[g["name"]]
        g["prefetch"] = group_prefetch(g)
        g["openwire_prefetch"] = openwire_prefetch(g["prefetch"])
        g["stopwaitsecs"] = stop_wait_seconds(g["job_seconds"])
        polls = queues.group_poll_queues(g)
        g["poll_order"] = polls["order"]
        g["poll_when_idle"] = polls["when_idle"]
        ceiling = budget if g["max"] is None else min(g["max"], budget)
        g["slots"] = max(g["processes"], ceiling) if autoscale else g["processes"]
        plan.append(g)
    return plan


def worker_environment(group: dict, process: str, broker: dict) -> dict:
    """The environment of one worker process of a planned ``group`` (README "What workers get").

    ``broker`` holds kind, host, user, password, and for RabbitMQ port and vhost, for ActiveMQ
    openwire_port and stomp_port. Credentials are URL-encoded. The group's own
    ``environment`` comes first, so the bundle's keys win.
    """
    user, password = quote(str(broker["user"]), safe=""), quote(str(broker["password"]), safe="")
    host = broker["host"]
    if broker["kind"] == "activemq":
        urls = {
            # JMS (OpenWire) clients read the prefetch from the URL; 0 makes each receive() pull.
            "BROKER_URL": (
                f"tcp://{host}:{broker['openwire_port']}"
                f"?jms.prefetchPolicy.all={group['openwire_prefetch']}"
                f"&jms.userName={user}&jms.password={password}"
            ),
            # STOMP cannot pull: 1 is its smallest working prefetch.
            "BROKER_STOMP_URL": (
                f"stomp://{user}:{password}@{host}:{broker['stomp_port']}"
                f"?activemq.prefetchSize={group['prefetch']}"
            ),
        }
    else:
        vhost = quote(str(broker["vhost"]), safe="")
        urls = {"BROKER_URL": f"amqp://{user}:{password}@{host}:{broker['port']}/{vhost}"}
    environment = {
        **(group.get("environment") or {}),
        "BROKER_KIND": broker["kind"],
        **urls,
        "BROKER_QUEUE": group["queue"],
        "BROKER_PREFETCH": group["prefetch"],
        "FLEET_POLL_ORDER": ",".join(group["poll_order"]),
        "FLEET_POLL_WHEN_IDLE": ",".join(group["poll_when_idle"]),
        "WORKER_GROUP": group["name"],
        "WORKER_PROCESS": process,
    }
    if group.get("recycle_after"):
        environment["WORKER_RECYCLE_AFTER"] = group["recycle_after"]
    return environment


def fleet_manifest(plan, cpus: int, budget: int) -> dict:
    """What the play rendered on a worker host, for the checks (/etc/brokerfleet/fleet.json):
    per group its processes and what the load guard and status report need. No secrets."""
    keys = ("name", "processes", "slots", "min", "max", "importance", "job_seconds")
    groups = [
        {
            **{key: group[key] for key in keys},
            "queues": list(dict.fromkeys(group["poll_order"] + group["poll_when_idle"])),
        }
        for group in plan
    ]
    return {"cpus": cpus, "budget": budget, "groups": groups}


def supervisor_environment(variables: dict) -> str:
    """A supervisord ``environment=`` value: KEY="value" pairs, quoted and escaped.

    supervisord expands ``%(name)s`` in its config, so ``%`` is doubled; the value is parsed
    like a POSIX shell word, so backslash and double quote are escaped.
    """
    pairs = []
    for key in sorted(variables):
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(key)):
            raise ValueError(f"environment variable name {key!r} is not a valid name")
        value = str(variables[key])
        value = value.replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
        pairs.append(f'{key}="{value}"')
    return ",".join(pairs)
