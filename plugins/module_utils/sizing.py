"""Sizing arithmetic for a broker and its worker fleet.

Plain Python with no Ansible import: the filter plugin in plugins/filter/ adapts these functions,
pytest and hypothesis test them directly. Every number the bundle derives from a host is
computed here, so a newcomer finds each decision in one place.
"""

from __future__ import annotations

import heapq
import math
from urllib.parse import quote

from . import access, brokers, inputs, queues

# The worker-group contract, its defaults and its checks, lives in plugins/module_utils/inputs.py;
# fleet_plan refuses groups that break it.
from .inputs import GROUP_DEFAULTS, group_errors

# Work a consumer holds in hand, in seconds of jobs, and the largest prefetch that gives.
# `make bench` (P1, RabbitMQ, 16 workers, 1,000 uneven jobs; README "Performance") measured
# the old rule, about a second of work: it cost 3-7 % against the best fixed prefetch for jobs
# of 10-300 ms, where a tenth of a second stays within 2 % of it. RabbitMQ's guide to
# consumer prefetch finds 100-300 best for tiny jobs; the low end keeps the burst that is
# redelivered when a worker dies small.
PREFETCH_SECONDS = 0.1
MAX_PREFETCH = 100

# A group's max_job_seconds, when it sets none: JOB_ALLOWANCE_FACTOR x job_seconds, at least
# JOB_ALLOWANCE_FLOOR seconds (max_job_seconds says why).
JOB_ALLOWANCE_FACTOR = 10
JOB_ALLOWANCE_FLOOR = 60
# RabbitMQ's own consumer_timeout, in ms (30 min), and how far above the longest time a
# delivery may wait for its ack the bundle sets it (consumer_timeout_ms says why).
DEFAULT_CONSUMER_TIMEOUT_MS = 1_800_000
CONSUMER_TIMEOUT_MARGIN = 2


def host_cpus(nproc=None, vcpus=None, override=None) -> int:
    """CPUs the fleet may use: ``fleet_cpus`` if given (an integer >= 1: 0 is refused, not
    taken for unset), else the host's nproc, else its vCPUs."""
    if override not in (None, ""):
        return inputs.number("fleet_cpus", override)
    for value in (nproc, vcpus):
        if value not in (None, "", 0):
            return int(value)
    raise ValueError("cannot tell the host's CPUs: set fleet_cpus")


def worker_budget(cpus, workers_per_cpu, memory_mb, worker_memory_mb, reserve_mb=0) -> int:
    """Worker processes a host can run: CPUs x workers_per_cpu, capped by the memory left
    after ``reserve_mb`` (the OS, and a broker on the same host) at ``worker_memory_mb`` each.
    """
    workers_per_cpu = inputs.number("workers_per_cpu", workers_per_cpu)
    worker_memory_mb = inputs.number("worker_memory_mb", worker_memory_mb)
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
    """Messages a consumer may hold unacknowledged (AMQP basic.qos prefetch_count): about
    PREFETCH_SECONDS of work, at least 1, at most MAX_PREFETCH.

    Enough that the round trip of an ack and the next delivery does not idle a worker of short
    jobs, and no more: at the end of a backlog, messages held by one worker wait while others
    idle, so jobs of PREFETCH_SECONDS or more get 1 (RabbitMQ's and Celery's advice for long
    tasks).
    """
    # Rounded first, so that 0.1 / 0.02 is 5 rather than 6 by a float's last bit.
    return max(1, min(MAX_PREFETCH, math.ceil(round(PREFETCH_SECONDS / job_seconds, 9))))


def max_job_seconds(group) -> float:
    """The longest a job of ``group`` may run: its ``max_job_seconds``, else derived from its
    ``job_seconds`` (the typical job): JOB_ALLOWANCE_FACTOR (10) times it, at least
    JOB_ALLOWANCE_FLOOR (60 s), at most a day (inputs.MAX_JOB_SECONDS), to the millisecond.

    Job lengths have a long tail (a cold cache, a big import): ten times the typical job lets
    that tail through, yet still stops the job that would run for hours in a group sized for
    seconds. The floor spares groups of sub-second jobs from dead-lettering a job that merely
    met a slow disk. Neither costs much: the allowance only bounds how long a stopping worker
    is waited for (stop_wait_seconds), the reference worker exits once its job is done.
    """
    own = group.get("max_job_seconds")
    if own is not None:
        return inputs.number("max_job_seconds", own)
    seconds = inputs.number("job_seconds", group.get("job_seconds", GROUP_DEFAULTS["job_seconds"]))
    derived = max(JOB_ALLOWANCE_FACTOR * seconds, JOB_ALLOWANCE_FLOOR)
    return min(inputs.MAX_JOB_SECONDS, round(derived, 3))


def stop_wait_seconds(max_job_seconds) -> int:
    """supervisord ``stopwaitsecs``: time a worker gets after SIGTERM (a scale-down, a shed, a
    restart) to finish its job and ack, before supervisord kills it.

    The group's longest allowed job (max_job_seconds) plus 10 s to ack and exit, so that no
    job the worker accepted is killed mid-way, and run again.
    """
    return math.ceil(max_job_seconds) + 10


def unacked_per_worker(group) -> int:
    """Messages one worker of ``group`` may hold unacknowledged on RabbitMQ: its prefetch on
    each queue it consumes (one per priority level). It works them one after another."""
    return group_prefetch(group) * len(queues.consumed_queues(group))


def consumer_timeout_ms(groups) -> int:
    """RabbitMQ ``consumer_timeout`` (rabbitmq.conf, milliseconds) for worker ``groups``
    (every definition of every group: inputs.group_definitions).

    RabbitMQ closes the channel of a consumer that has not acked a delivery within this time
    (30 min by default): every message the worker holds is redelivered, and the ack of the job
    it was running fails, so a job longer than the timeout runs again and again. The clock
    starts at delivery, and a worker works the messages it holds in turn, so the longest a
    delivery may wait for its ack is unacked_per_worker x max_job_seconds. The timeout is
    CONSUMER_TIMEOUT_MARGIN (2) times the longest of these over the groups: a job may overrun
    its announced length on a loaded host, and a timeout that fires without need costs a
    redelivery where a long one costs nothing. Never below RabbitMQ's default, which still
    ends a consumer stuck for good.
    """
    longest = max(
        (unacked_per_worker(group) * max_job_seconds(group) for group in groups), default=0
    )
    return max(DEFAULT_CONSUMER_TIMEOUT_MS, math.ceil(CONSUMER_TIMEOUT_MARGIN * longest) * 1000)


def memory_watermark(host_memory_mb, broker_memory_mb=None, fraction=0.4) -> dict:
    """RabbitMQ ``vm_memory_high_watermark`` and a matching ``disk_free_limit``.

    Without a memory limit for the broker the watermark is relative (``fraction`` of the RAM the
    node detects, 0.4 being RabbitMQ's default). With ``broker_memory_mb`` (a cgroup limit, or
    the share left beside workers) it is absolute: ``fraction`` of that limit, since the node
    can briefly use up to twice the watermark while it pages messages out. ``disk_free_limit``
    is at least the watermark, as RabbitMQ's production checklist recommends, so that the
    node can always page its memory out to disk.
    """
    fraction = inputs.number("rabbitmq_memory_fraction", fraction)
    broker_memory_mb = inputs.number("rabbitmq_memory_limit_mb", broker_memory_mb)
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


def fleet_plan(
    groups, budget: int, autoscale: bool = False, broker_kind="rabbitmq", allow_root=False
) -> list[dict]:
    """The groups with their defaults filled in and what the bundle derives for each:
    ``processes``, ``prefetch``, ``openwire_prefetch``, ``max_job_seconds`` (set or derived),
    ``stopwaitsecs``, the queues its workers poll (``poll_order``, ``poll_when_idle``), and
    ``programs``: the names of the supervisord programs rendered for it. With ``autoscale`` a
    group may gain workers from idle groups, so it gets a program for each worker it may reach
    (its max, or the whole budget); only the first ``processes`` start by themselves. Groups
    that break the contract on ``broker_kind`` (with ``allow_root``: fleet_allow_root_workers)
    are refused, every error in one ValueError.
    """
    allow_root = inputs.flag("fleet_allow_root_workers", allow_root)
    errors = group_errors(groups, broker_kind, allow_root=allow_root)
    if errors:
        raise ValueError("; ".join(errors))
    counts = split_budget(budget, groups)
    plan = []
    for group in groups:
        g = {**GROUP_DEFAULTS, "queue": group["name"], **group}
        g["processes"] = counts[g["name"]]
        g["prefetch"] = group_prefetch(g)
        g["openwire_prefetch"] = openwire_prefetch(g["prefetch"])
        g["max_job_seconds"] = max_job_seconds(g)
        g["stopwaitsecs"] = stop_wait_seconds(g["max_job_seconds"])
        polls = queues.group_poll_queues(g)
        g["poll_order"] = polls["order"]
        g["poll_when_idle"] = polls["when_idle"]
        ceiling = budget if g["max"] is None else min(g["max"], budget)
        slots = max(g["processes"], ceiling) if autoscale else g["processes"]
        g["programs"] = [program_name(g["name"], index) for index in range(slots)]
        plan.append(g)
    return plan


def worker_environment(group: dict, broker: dict) -> dict:
    """The environment of the worker processes of a planned ``group`` (README "What workers
    get"); brokerfleet-exec adds WORKER_PROCESS, the one key that differs between processes.

    ``broker`` holds kind, host, user, password, and for RabbitMQ port and vhost, for ActiveMQ
    openwire_port and stomp_port (the URLs per kind: plugins/module_utils/brokers.py); with
    ``hosts`` (every broker node) BROKER_URLS lists a URL per node, else only ``host``'s. A group
    with its own ``broker_user`` logs in as that user (plugins/module_utils/access.py).
    Credentials are URL-encoded, an IPv6 host is bracketed. The group's own ``environment``
    comes first, so the bundle's keys win (preflight refuses a group that sets one of them).
    """
    kind = brokers.kind(broker["kind"])
    user, password = (quote(text, safe="") for text in access.group_credentials(group, broker))
    urls = kind.worker_urls(broker, group, user, password, brokers.url_host(broker["host"]))
    # Every node of a cluster (``broker["hosts"]``), for workers to spread over and fail over
    # to; URL-encoded credentials and bracketed hosts hold no comma.
    every_node = [
        kind.worker_urls(broker, group, user, password, brokers.url_host(host))["BROKER_URL"]
        for host in broker.get("hosts") or [broker["host"]]
    ]
    environment = {
        **(group.get("environment") or {}),
        "BROKER_KIND": kind.name,
        **urls,
        "BROKER_URLS": ",".join(every_node),
        "BROKER_QUEUE": group["queue"],
        "BROKER_PREFETCH": group["prefetch"],
        "FLEET_POLL_ORDER": ",".join(group["poll_order"]),
        "FLEET_POLL_WHEN_IDLE": ",".join(group["poll_when_idle"]),
        "WORKER_GROUP": group["name"],
        # The reference worker dead-letters a job announced longer than this
        # (roles/worker_fleet/README.md, "Reference worker").
        "WORKER_MAX_JOB_SECONDS": group["max_job_seconds"],
    }
    if group.get("recycle_after"):
        environment["WORKER_RECYCLE_AFTER"] = group["recycle_after"]
    return {key: str(value) for key, value in environment.items()}


def program_name(group_name: str, index: int) -> str:
    """The supervisord program of a group's ``index``-th worker slot: <group>-NN."""
    return f"{group_name}-{index:02d}"
