"""The queues a fleet needs on its broker, the order workers poll them in, and the broker
policies that govern them.

Plain Python, no Ansible import (see plugins/filter/fleet.py).
"""

from __future__ import annotations

import json
import math
import re
from functools import reduce

from . import brokers

# Priority levels a group may declare, most urgent first. Each level is its own queue,
# <queue>.<level>, so a backlog of one level never hides another level's jobs.
PRIORITY_LEVELS = ("very_high", "high", "medium", "low", "very_low")

# Longest weighted poll cycle (sum of the weights once divided by their common divisor):
# the cycle travels in every worker's environment.
MAX_POLL_CYCLE = 1000

# RabbitMQ types of the worker groups' queues (broker_queue_type). RabbitMQ cannot change the
# type of a queue once declared.
QUEUE_TYPES = ("classic", "quorum")

# Default of a group's ``delivery_limit`` (the ``delivery-limit`` policy key): a quorum queue
# dead-letters a message to <queue>.dead instead of redelivering it once it has come back to
# the queue more than this many times (its x-delivery-count). Every return counts, not only
# the jobs that failed: a job killed mid-way by a worker crash or an OOM kill, and, on
# RabbitMQ 3.10, the prefetched messages a worker gives back unstarted when it exits
# (SIGTERM, recycle_after, a scale-down) or loses its connection. 20 leaves room for those
# ordinary returns, while a poison message (one that kills its worker every time) is still
# dead-lettered on its 21st return instead of looping forever. Classic queues have no
# delivery limit: the key only acts on quorum queues.
DEFAULT_DELIVERY_LIMIT = 20


def group_queues(groups) -> list[str]:
    """Every queue the worker groups consume, in order, without repeats (two groups may
    drain one queue). A group's queue is its ``queue``, default its name; a group with
    ``priority_levels`` consumes one queue per level instead, ``<queue>.<level>``."""
    queues = []
    for group in groups:
        for queue in consumed_queues(group):
            if queue not in queues:
                queues.append(queue)
    return queues


def consumed_queues(group) -> list[str]:
    """The queues one group consumes: its queue, or one per priority level, most urgent first."""
    queue = group.get("queue") or group["name"]
    levels = group.get("priority_levels")
    if not levels:
        return [queue]
    return [f"{queue}.{level}" for level in PRIORITY_LEVELS if level in levels]


def checked_queues(
    groups, broker_kind, max_length=0, queue_type="classic", extra=None
) -> list[dict]:
    """What brokerfleet-check watches on the broker: each consumed queue, its group (the
    first that consumes it), its priority ``level`` (None for a group without levels), its
    length limit ``max_length`` (work_queue_max_length(): None when it has none), how long its
    backlog may wait, ``max_drain_seconds`` (the smallest of the groups that consume it, so
    each group's limit holds; None when none sets one), its dead-letter queue on
    ``broker_kind`` and that queue's length limit, ``dead_max_length``
    (dead_letter_max_length(): None when it has none). ``max_length``, ``queue_type`` and
    ``extra`` are rabbitmq_queue_max_length, broker_queue_type and
    rabbitmq_queue_policy_extra, as rabbitmq_queue_policies() gets them."""
    dead_max_length = dead_letter_max_length(max_length, queue_type, broker_kind)
    work_max_length = None
    if brokers.kind(broker_kind).name == "rabbitmq":
        work_max_length = work_queue_max_length(max_length, extra)
    checked = {}
    for group in groups:
        levels = group.get("priority_levels")
        for queue in consumed_queues(group):
            entry = checked.setdefault(
                queue,
                {
                    "name": queue,
                    "group": group["name"],
                    "level": queue.rsplit(".", 1)[1] if levels else None,
                    "max_length": work_max_length,
                    "max_drain_seconds": None,
                    "dead": dead_letter_queue(queue, broker_kind),
                    "dead_max_length": dead_max_length,
                },
            )
            limits = [entry["max_drain_seconds"], group.get("max_drain_seconds")]
            entry["max_drain_seconds"] = min((s for s in limits if s is not None), default=None)
    return list(checked.values())


def work_queue_max_length(max_length=0, extra=None):
    """The max-length of a RabbitMQ work queue's policy (rabbitmq_queue_policies()):
    ``max_length`` (rabbitmq_queue_max_length) unless ``extra`` (rabbitmq_queue_policy_extra)
    sets its own, which wins; None for no limit. ActiveMQ's queues have none (its store limit
    bounds them)."""
    limit = (extra or {}).get("max-length", max_length)
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None


def dead_letter_queue(queue: str, broker_kind: str) -> str:
    """Where ``broker_kind`` moves a queue's rejected and expired messages: ``<queue>.dead`` on
    RabbitMQ (the bundle's policy), ``ActiveMQ.DLQ.Queue.<queue>`` on ActiveMQ (its
    individualDeadLetterStrategy). See plugins/module_utils/brokers.py."""
    return brokers.kind(broker_kind).dead_letter_queue(queue)


def dead_letter_max_length(max_length, queue_type="classic", broker_kind="rabbitmq"):
    """The length limit of a dead-letter queue: ``max_length`` (rabbitmq_queue_max_length)
    for a RabbitMQ quorum queue, None (no limit) for a classic one, 0 or an ActiveMQ one. The
    one place that decides it: rabbitmq_queue_policies() writes it into the ``.dead`` queues'
    policies, checked_queues() hands it to brokerfleet-check, which calls a dead-letter queue
    near it CRITICAL.

    Why classic ``.dead`` queues have no limit: a classic queue dead-letters at most once. The
    dead letter is published to ``<queue>.dead`` by the broker itself, with no publisher to
    tell, so a full ``.dead`` queue (with ``reject-publish`` as with ``drop-head``) drops the
    failed job without a trace: a limit there could only ever lose jobs. Unbounded, it holds
    every failed job until someone moves or purges them; what bounds it is the broker's disk
    (below ``disk_free_limit`` the disk alarm blocks every publisher, so no new jobs come in
    to fail), and brokerfleet-check reports it from its first failed job, CRITICAL while more
    keep coming.

    Why quorum ``.dead`` queues keep it: a quorum work queue dead-letters at least once
    (rabbitmq_queue_policies()): a dead letter that its full ``.dead`` queue refuses stays in
    the work queue, counted against the work queue's own max-length, and is retried. Nothing
    is lost; a pile of failed jobs ends up refusing publishes to the work queue, pushing back
    on producers as any full queue does, instead of filling the disk the whole broker shares.

    ActiveMQ's dead-letter queues (individualDeadLetterStrategy) have no length limit either;
    its store limit bounds them, which the broker check watches (memory, store, temp usage).
    """
    _check_queue_type(queue_type)
    if brokers.kind(broker_kind).name != "rabbitmq" or queue_type != "quorum":
        return None
    return max_length or None


def priority_errors(levels) -> list[str]:
    """What is wrong with a group's ``priority_levels`` (empty when valid)."""
    if not isinstance(levels, dict) or not levels:
        return [f"priority_levels must map levels ({', '.join(PRIORITY_LEVELS)}) to weights"]
    errors = [
        f"priority_levels: unknown level {level!r}; levels are {', '.join(PRIORITY_LEVELS)}"
        for level in levels
        if level not in PRIORITY_LEVELS
    ]
    weights = list(levels.values())
    if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in weights):
        errors.append(f"priority_levels: weights must be integers >= 0, got {levels!r}")
    elif not any(weights):
        errors.append("priority_levels: at least one level needs a weight > 0 (all are 0)")
    elif sum(weights) // reduce(math.gcd, weights) > MAX_POLL_CYCLE:
        errors.append(
            f"priority_levels: the weights make a poll cycle longer than {MAX_POLL_CYCLE}; "
            "use smaller weights"
        )
    return errors


def poll_order(weights: dict) -> list[str]:
    """The cycle in which a worker polls priority levels: smooth weighted round-robin.

    Each turn every level gains its weight; the level with the most credit (the most urgent
    on a tie) is polled and pays back the sum of the weights. The cycle is deterministic, has
    sum(weights) entries (after dividing by their common divisor), holds each level exactly
    its weight times, and interleaves the levels instead of polling one level's turns in a
    burst. Levels of weight 0 are not in the cycle: a worker polls
    them only when a whole cycle found nothing (see poll_when_idle).

    {very_high: 8, high: 4, medium: 2, low: 1} gives very_high, high, very_high, medium,
    very_high, high, very_high, low, very_high, high, very_high, medium, very_high, high,
    very_high.
    """
    errors = priority_errors(weights)
    if errors:
        raise ValueError("; ".join(errors))
    levels = [level for level in PRIORITY_LEVELS if weights.get(level, 0) > 0]
    divisor = reduce(math.gcd, (weights[level] for level in levels))
    share = {level: weights[level] // divisor for level in levels}
    total = sum(share.values())
    credit = dict.fromkeys(levels, 0)
    order = []
    for _ in range(total):
        for level in levels:
            credit[level] += share[level]
        # max() keeps the first of equal candidates, and levels are most urgent first.
        chosen = max(levels, key=lambda level: credit[level])
        credit[chosen] -= total
        order.append(chosen)
    return order


def poll_when_idle(weights: dict) -> list[str]:
    """Levels of weight 0, most urgent first: polled only when every weighted level is empty."""
    return [level for level in PRIORITY_LEVELS if weights.get(level) == 0]


def group_poll_queues(group) -> dict:
    """What a group's workers poll: ``order`` (the weighted cycle, as queue names) and
    ``when_idle`` (queues of weight-0 levels). A group without priority levels polls its
    one queue."""
    queue = group.get("queue") or group["name"]
    levels = group.get("priority_levels")
    if not levels:
        return {"order": [queue], "when_idle": []}
    return {
        "order": [f"{queue}.{level}" for level in poll_order(levels)],
        "when_idle": [f"{queue}.{level}" for level in poll_when_idle(levels)],
    }


def rabbitmq_queue_policies(groups, max_length=0, extra=None, queue_type="classic") -> list[dict]:
    """One policy per work queue and one per dead-letter queue, for queues of ``queue_type``
    (broker_queue_type: classic or quorum).

    A work queue dead-letters rejected and expired messages through the default exchange to
    ``<queue>.dead``. It is bounded by ``max_length`` with overflow ``reject-publish``, so
    producers are told when the broker will not take more rather than messages being dropped
    (work_queue_max_length() tells brokerfleet-check the limit, which warns before it).
    ``<queue>.dead`` is bounded only where that loses nothing, on quorum queues
    (dead_letter_max_length() says why): a classic ``.dead`` queue gets no policy at all, and a
    ``brokerfleet-<queue>.dead`` policy left by an earlier version is removed
    (rabbitmq_policy_changes()). ``extra`` keys go into the work-queue policies and win over
    these.

    A quorum work queue also gets ``delivery-limit`` (its group's ``delivery_limit``, default
    DEFAULT_DELIVERY_LIMIT; when groups share a queue the smallest wins) and at-least-once
    dead-lettering, ``dead-letter-strategy: at-least-once``. RabbitMQ 3.10 honours that only
    with ``overflow: reject-publish``: its quorum queue guide says that with the default
    drop-head overflow, even on a queue without a length limit, dead-lettering falls back to
    at-most-once. So a quorum work queue gets ``reject-publish`` even when ``max_length`` is 0.
    At-least-once also needs the ``stream_queue`` feature flag, enabled by default on a node
    created by 3.9 or later (a fresh 3.10 node). ``extra`` may not undo that pairing silently:
    a quorum work queue left with at-least-once and another overflow is an error. The ``.dead``
    queues keep the length limits only (no delivery limit: nothing consumes them as jobs).
    Classic queues get exactly the classic policies: no delivery limit, at-most-once
    dead-lettering, and no limit on ``.dead``.
    """
    _check_queue_type(queue_type)
    limits = {"max-length": max_length, "overflow": "reject-publish"} if max_length else {}
    dead_max_length = dead_letter_max_length(max_length, queue_type)
    dead_limits = (
        {"max-length": dead_max_length, "overflow": "reject-publish"} if dead_max_length else {}
    )
    quorum = queue_type == "quorum"
    delivery_limits = queue_delivery_limits(groups) if quorum else {}
    policies = []
    for queue in group_queues(groups):
        dead = dead_letter_queue(queue, "rabbitmq")
        work = {"dead-letter-exchange": "", "dead-letter-routing-key": dead, **limits}
        if quorum:
            work.update(
                {
                    "delivery-limit": delivery_limits[queue],
                    "dead-letter-strategy": "at-least-once",
                    "overflow": "reject-publish",
                }
            )
        work.update(extra or {})
        if (
            quorum
            and work.get("dead-letter-strategy") == "at-least-once"
            and work.get("overflow") != "reject-publish"
        ):
            raise ValueError(
                f"rabbitmq_queue_policy_extra sets overflow {work.get('overflow')!r}, but the "
                "quorum queues' at-least-once dead-lettering needs overflow reject-publish "
                "(RabbitMQ falls back to at-most-once otherwise): drop overflow from "
                "rabbitmq_queue_policy_extra, or set dead-letter-strategy: at-most-once there too"
            )
        policies.append(
            {"name": f"brokerfleet-{queue}", "pattern": _exactly(queue), "definition": work}
        )
        if dead_limits:
            policies.append(
                {
                    "name": f"brokerfleet-{dead}",
                    "pattern": _exactly(dead),
                    "definition": dead_limits,
                }
            )
    return policies


def queue_delivery_limits(groups) -> dict[str, int]:
    """Each consumed queue's delivery limit: its group's ``delivery_limit`` (the raw inventory
    value, DEFAULT_DELIVERY_LIMIT when unset), the smallest when groups share the queue."""
    limits = {}
    for group in groups:
        limit = group.get("delivery_limit")
        if limit is None:
            limit = DEFAULT_DELIVERY_LIMIT
        for queue in consumed_queues(group):
            limits[queue] = min(limits.get(queue, limit), limit)
    return limits


def _check_queue_type(queue_type) -> None:
    if queue_type not in QUEUE_TYPES:
        raise ValueError(
            f"broker_queue_type must be one of {', '.join(QUEUE_TYPES)}, got {queue_type!r}"
        )


def rabbitmq_policy_changes(wanted, current) -> dict:
    """What to do so the broker holds the ``wanted`` policies: ``apply`` (missing or different,
    as given) and ``remove`` (names of brokerfleet- policies no longer wanted).

    ``current`` is ``rabbitmqctl list_policies --formatter json``. Reading every policy once and
    writing only the differences keeps a re-run fast: each write starts rabbitmqctl, ~2 s.
    """
    have = {policy["name"]: policy for policy in current}
    apply = []
    for policy in wanted:
        found = have.get(policy["name"])
        if not found or (
            found.get("pattern"),
            found.get("apply-to"),
            _definition(found.get("definition")),
            int(found.get("priority", 0)),
        ) != (policy["pattern"], "queues", policy["definition"], 0):
            apply.append(policy)
    names = {policy["name"] for policy in wanted}
    remove = [name for name in have if name.startswith("brokerfleet-") and name not in names]
    return {"apply": apply, "remove": remove}


def _definition(value):
    """A listed policy's definition: rabbitmqctl 3.10 prints it as a JSON string."""
    return json.loads(value) if isinstance(value, str) else value


def rabbitmq_missing_queues(wanted, current, queue_type="classic") -> list[str]:
    """The ``wanted`` queue names not yet declared; ``current`` is the management API's queue
    list (columns name, durable and type; a queue listed without ``type`` is classic).

    A wanted queue that exists but is not durable, or not of ``queue_type``
    (broker_queue_type), is an error: the first would lose its messages on a restart, and
    RabbitMQ can change neither in place. Every such queue is named in one ValueError, before
    anything is declared."""
    _check_queue_type(queue_type)
    have = {queue["name"]: queue for queue in current}
    errors = []
    for name in wanted:
        found = have.get(name)
        if found is None:
            continue
        if not found.get("durable"):
            errors.append(
                f"queue {name!r} exists but is not durable: its messages would not survive a "
                "restart; drain and delete it, and the next run declares it durable"
            )
            continue
        kind = found.get("type") or "classic"
        if kind != queue_type:
            keep = (
                f", or set broker_queue_type: {kind} to keep it (the type of every worker queue)"
                if kind in QUEUE_TYPES
                else ""
            )
            errors.append(
                f"queue {name!r} exists as a {kind} queue but broker_queue_type is "
                f"{queue_type!r}: RabbitMQ cannot change a queue's type; drain it and delete "
                f"it, and the next run declares it as a {queue_type} queue{keep}"
            )
    if errors:
        raise ValueError("; ".join(errors))
    return [name for name in wanted if name not in have]


def _exactly(name: str) -> str:
    return "^" + re.escape(name) + "$"
