"""The broker kinds the bundle knows, one table: everything that differs between RabbitMQ and
ActiveMQ for the rest of the bundle. A kind not in the table is an error wherever a kind is read.

Plain Python, no Ansible import (see plugins/filter/fleet.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True)
class BrokerKind:
    name: str
    # Debian packages the broker role installs.
    packages: tuple[str, ...]
    # A queue's dead-letter queue is <prefix><queue><suffix>.
    dead_prefix: str
    dead_suffix: str
    # The URLs workers get: (broker, group, user, password, host) -> {variable: URL}.
    worker_urls: Callable[..., dict]
    # What brokerfleet-check broker needs to reach the broker: (broker) -> dict.
    check_access: Callable[[dict], dict]

    def dead_letter_queue(self, queue: str) -> str:
        return f"{self.dead_prefix}{queue}{self.dead_suffix}"


def _rabbitmq_urls(broker, group, user, password, host) -> dict:
    vhost = quote(str(broker["vhost"]), safe="")
    return {"BROKER_URL": f"amqp://{user}:{password}@{host}:{broker['port']}/{vhost}"}


def _activemq_urls(broker, group, user, password, host) -> dict:
    return {
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


def _rabbitmq_check_access(broker) -> dict:
    # The management API on this host (rabbitmq_management_address/port).
    return {
        "url": f"http://{url_host(broker['management_address'])}:{broker['management_port']}",
        "vhost": str(broker["vhost"]),
    }


def _activemq_check_access(broker) -> dict:
    # The statistics plugin over STOMP on this host.
    return {"stomp_host": str(broker["stomp_host"]), "stomp_port": int(broker["stomp_port"])}


KINDS = {
    kind.name: kind
    for kind in (
        BrokerKind(
            name="rabbitmq",
            # python3-requests: community.rabbitmq's modules talk to the management API with it.
            packages=("rabbitmq-server", "python3-requests"),
            # The bundle's policy dead-letters through the default exchange to <queue>.dead.
            dead_prefix="",
            dead_suffix=".dead",
            worker_urls=_rabbitmq_urls,
            check_access=_rabbitmq_check_access,
        ),
        BrokerKind(
            name="activemq",
            # XStream renders map messages for STOMP clients (brokerfleet-check's statistics);
            # Debian's activemq package leaves it out.
            packages=("activemq", "libxstream-java"),
            # individualDeadLetterStrategy's default prefix.
            dead_prefix="ActiveMQ.DLQ.Queue.",
            dead_suffix="",
            worker_urls=_activemq_urls,
            check_access=_activemq_check_access,
        ),
    )
}
BROKER_KINDS = tuple(KINDS)


def kind(name) -> BrokerKind:
    """The table entry of broker kind ``name``; any other name is a ValueError."""
    if name not in KINDS:
        raise unknown_kind(name)
    return KINDS[name]


def unknown_kind(name) -> ValueError:
    return ValueError(f"broker kind must be one of {', '.join(BROKER_KINDS)}, got {name!r}")


def packages(name) -> list[str]:
    """The Debian packages of broker kind ``name``."""
    return list(kind(name).packages)


def url_host(host) -> str:
    """``host`` as the host part of a URL: an IPv6 address goes in brackets (RFC 3986)."""
    host = str(host)
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def host_addresses(hosts, host_vars) -> list[str]:
    """Where clients reach each of ``hosts`` (inventory names): its ``ansible_host`` when the
    inventory sets one, else its name. ``host_vars`` maps a name to its variables."""
    return [str((host_vars[host] or {}).get("ansible_host") or host) for host in hosts or []]
