"""Ansible filters of the brokerfleet.fleet collection: thin adapters over its plain Python
(plugins/module_utils, importable as `brokerfleet` too, which the unit tests use).

The logic lives in those modules, unit-tested without Ansible; this file only turns their
ValueErrors into AnsibleFilterErrors that name the bad variable, and reads the worker hosts'
own worker_groups out of hostvars for the union filters. Roles call these filters by
their full name, brokerfleet.fleet.<filter>.
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.brokerfleet.fleet.plugins.module_utils import (
    access,
    activemq,
    brokers,
    cluster,
    hostfiles,
    inputs,
    queues,
    sizing,
)


def _adapt(function):
    def filter_(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (ValueError, TypeError) as error:
            raise AnsibleFilterError(f"brokerfleet: {error}") from error

    filter_.__name__ = function.__name__
    filter_.__doc__ = function.__doc__
    return filter_


def _groups_by_host(worker_hosts, hostvars) -> dict:
    """{host: its worker_groups} for ``worker_hosts`` only, in their order: None where a host
    does not set worker_groups itself (role defaults are not in hostvars)."""
    return {host: hostvars[host].get("worker_groups") for host in worker_hosts or []}


def union_groups(worker_hosts, hostvars, fallback=None):
    """``groups['workers'] | fleet_union_groups(hostvars, worker_groups)``: inputs.union_groups
    over those hosts; ``fallback`` where none of them sets worker_groups."""
    return inputs.union_groups(_groups_by_host(worker_hosts, hostvars), fallback)


def group_definitions(worker_hosts, hostvars, fallback=None):
    """``groups['workers'] | fleet_group_definitions(hostvars, worker_groups)``:
    inputs.group_definitions, every host's definition of every group."""
    return inputs.group_definitions(_groups_by_host(worker_hosts, hostvars), fallback)


def union_errors(worker_hosts, hostvars, broker_kind="rabbitmq"):
    """``groups['workers'] | fleet_union_errors(hostvars, broker_kind)``: inputs.union_errors."""
    return inputs.union_errors(_groups_by_host(worker_hosts, hostvars), broker_kind)


class FilterModule:
    """brokerfleet.fleet filters."""

    def filters(self):
        return {
            "activemq_heap_mb": _adapt(activemq.heap_mb),
            "activemq_broker_limits": _adapt(activemq.broker_limits),
            "activemq_jmx_password": _adapt(access.jmx_password),
            "fleet_group_errors": _adapt(inputs.group_errors),
            "fleet_input_errors": _adapt(inputs.input_errors),
            "fleet_topology_errors": _adapt(inputs.topology_errors),
            "fleet_union_groups": _adapt(union_groups),
            "fleet_union_errors": _adapt(union_errors),
            "fleet_group_definitions": _adapt(group_definitions),
            "fleet_host_cpus": _adapt(sizing.host_cpus),
            "fleet_worker_budget": _adapt(sizing.worker_budget),
            "fleet_plan": _adapt(sizing.fleet_plan),
            "fleet_manifest": _adapt(hostfiles.fleet_manifest),
            "fleet_changes": _adapt(hostfiles.fleet_changes),
            "fleet_checks_settings": _adapt(hostfiles.checks_settings),
            "fleet_broker_config": _adapt(hostfiles.broker_config),
            "fleet_broker_packages": _adapt(brokers.packages),
            "fleet_host_addresses": _adapt(brokers.host_addresses),
            "rabbitmq_node_name": _adapt(cluster.node_name),
            "rabbitmq_must_join": _adapt(cluster.must_join),
            "rabbitmq_under_maintenance": _adapt(cluster.under_maintenance),
            "rabbitmq_cluster_problems": _adapt(cluster.health_problems),
            "fleet_prefetch": _adapt(sizing.prefetch_for),
            "fleet_queues": _adapt(queues.group_queues),
            "rabbitmq_queue_policies": _adapt(queues.rabbitmq_queue_policies),
            "rabbitmq_policy_changes": _adapt(queues.rabbitmq_policy_changes),
            "rabbitmq_missing_queues": _adapt(queues.rabbitmq_missing_queues),
            "activemq_queue_policies": _adapt(sizing.activemq_queue_policies),
            "fleet_poll_order": _adapt(queues.poll_order),
            "rabbitmq_memory_watermark": _adapt(sizing.memory_watermark),
            "rabbitmq_consumer_timeout": _adapt(sizing.consumer_timeout_ms),
            "worker_specs": _adapt(hostfiles.worker_specs),
            "rabbitmq_users": _adapt(access.rabbitmq_users),
            "rabbitmq_access_changes": _adapt(access.rabbitmq_access_changes),
            "activemq_users": _adapt(access.activemq_users),
            "activemq_authorization": _adapt(access.activemq_authorization),
        }
