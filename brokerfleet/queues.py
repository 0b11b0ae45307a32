"""The queues a fleet needs on its broker, and the RabbitMQ policies that govern them.

Plain Python, no Ansible import (see filter_plugins/fleet.py).
"""

from __future__ import annotations

import re

DEAD_SUFFIX = ".dead"


def group_queues(groups) -> list[str]:
    """The queue each worker group consumes (its ``queue``, default its name), in order,
    without repeats: two groups may drain one queue."""
    queues = []
    for group in groups:
        queue = group.get("queue") or group["name"]
        if queue not in queues:
            queues.append(queue)
    return queues


def rabbitmq_queue_policies(groups, max_length=0, extra=None) -> list[dict]:
    """One policy per work queue and one per dead-letter queue.

    A work queue dead-letters rejected and expired messages through the default exchange to
    ``<queue>.dead``; both are bounded by ``max_length`` with overflow ``reject-publish``, so
    producers are told when the broker will not take more rather than messages being dropped.
    ``extra`` keys go into the work-queue policies and win over these.
    """
    limits = {"max-length": max_length, "overflow": "reject-publish"} if max_length else {}
    policies = []
    for queue in group_queues(groups):
        dead = queue + DEAD_SUFFIX
        work = {
            "dead-letter-exchange": "",
            "dead-letter-routing-key": dead,
            **limits,
            **(extra or {}),
        }
        policies.append(
            {"name": f"brokerfleet-{queue}", "pattern": _exactly(queue), "definition": work}
        )
        if limits:
            policies.append(
                {"name": f"brokerfleet-{dead}", "pattern": _exactly(dead), "definition": limits}
            )
    return policies


def _exactly(name: str) -> str:
    return "^" + re.escape(name) + "$"
