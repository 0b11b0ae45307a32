"""A RabbitMQ cluster as roles/rabbitmq builds it: its node names, whether a node has yet to
join, and whether the cluster is healthy enough for one of its nodes to restart.

Plain Python with no Ansible import (plugins/filter/fleet.py adapts it). ``status`` is what
`rabbitmqctl --formatter json cluster_status` prints on a node: disk_nodes, ram_nodes,
running_nodes, alarms, partitions (node -> nodes it cannot see) and maintenance_status.
"""

from __future__ import annotations


def node_name(hostname: str) -> str:
    """The node name RabbitMQ gives itself on a host: rabbit@ and the short host name."""
    return "rabbit@" + str(hostname).split(".")[0]


def members(status: dict) -> list[str]:
    """The nodes of the cluster the answering node belongs to."""
    return list(status.get("disk_nodes") or []) + list(status.get("ram_nodes") or [])


def must_join(status: dict, seed: str) -> bool:
    """Whether the answering node has yet to join ``seed``'s cluster (the seed never does)."""
    return seed not in members(status)


def under_maintenance(status: dict, node: str) -> bool:
    """Whether ``node`` was drained (rabbitmq-upgrade drain) and not revived since."""
    return (status.get("maintenance_status") or {}).get(node) == "under maintenance"


def health_problems(status: dict) -> list[str]:
    """Why one node of this cluster must not stop now: a member not running, an alarm, a
    partition, or a node still drained. Empty when every member runs and all is clear."""
    running = set(status.get("running_nodes") or [])
    problems = [f"{node} is not running" for node in members(status) if node not in running]
    problems += [f"alarm {alarm}" for alarm in status.get("alarms") or []]
    partitions = status.get("partitions") or {}
    problems += [
        f"{node} cannot see {', '.join(map(str, unseen))}"
        for node, unseen in sorted(partitions.items())
        if unseen
    ]
    problems += [
        f"{node} is drained (under maintenance)"
        for node in sorted(status.get("maintenance_status") or {})
        if under_maintenance(status, node)
    ]
    return problems
