"""Who may do what on the broker: the shared application user, and a user of its own for each
worker group that names one (``broker_user`` in the group), whose permissions cover only that
group's queues, so one group's code cannot read, purge or redeclare another group's jobs.

Plain Python, no Ansible import (see plugins/filter/fleet.py).
"""

from __future__ import annotations

import hashlib
import hmac
import re

from . import queues

# The tag that marks the users this module made for groups: a user with it that no group names
# any more is removed. RabbitMQ gives a tag it does not know no rights.
GROUP_USER_TAG = "brokerfleet-group"
# The shared user declares queues through the management API, within its vhost only.
SHARED_USER_TAGS = ["management"]
# Publishing through the default exchange needs write on it. Workers often queue follow-up jobs
# for another group, as any AMQP client may; reading another group's queue is what is refused.
DEFAULT_EXCHANGE = "amq.default"


# ActiveMQ grants rights to groups of users: the shared user's, and one per group user.
ACTIVEMQ_SHARED_GROUP = "brokerfleet"


def derived_password(broker_password, purpose) -> str:
    """A password derived from ``broker_password`` (HMAC-SHA256 keyed with it, in hex): the
    inventory keeps one secret, and rotating it rotates every password derived from it."""
    message = f"brokerfleet {purpose}".encode()
    return hmac.new(str(broker_password).encode(), message, hashlib.sha256).hexdigest()


def group_password(broker_password, user) -> str:
    """The password of a group's own broker user."""
    return derived_password(broker_password, f"group user {user}")


def jmx_password(broker_password) -> str:
    """The password of ActiveMQ's JMX user. Hex, because the JDK's password file splits its
    lines on blanks; derived, so that it rotates with ``broker_password``."""
    return derived_password(broker_password, "activemq jmx")


def group_credentials(group: dict, broker: dict) -> tuple[str, str]:
    """(user, password) the workers of a planned ``group`` log in with."""
    if group.get("broker_user"):
        return group["broker_user"], group_password(broker["password"], group["broker_user"])
    return str(broker["user"]), str(broker["password"])


def own_queues_pattern(group: dict, broker_kind: str = "rabbitmq") -> str:
    """A RabbitMQ permission pattern matching exactly the queues of ``group``: each queue it
    consumes and its dead-letter queue."""
    names = []
    for queue in queues.consumed_queues(group):
        names += [queue, queues.dead_letter_queue(queue, broker_kind)]
    return "^(" + "|".join(re.escape(name) for name in names) + ")$"


def own_users(groups) -> list[tuple[dict, str]]:
    """(group, its broker_user) for each group that names a broker user of its own."""
    return [(group, group["broker_user"]) for group in groups if group.get("broker_user")]


def rabbitmq_users(groups, shared_user, password) -> list[dict]:
    """Every application user the broker needs: the shared one (``broker_user``, all rights on
    the vhost) and one per group that names its own. Each is {user, password, tags, configure,
    write, read}."""
    users = [
        {
            "user": str(shared_user),
            "password": str(password),
            "tags": SHARED_USER_TAGS,
            "configure": ".*",
            "write": ".*",
            "read": ".*",
        }
    ]
    for group, user in own_users(groups):
        own = own_queues_pattern(group)
        users.append(
            {
                "user": user,
                "password": group_password(password, user),
                "tags": [GROUP_USER_TAG],
                "configure": own,
                "write": own[:-2] + "|" + re.escape(DEFAULT_EXCHANGE) + ")$",
                "read": own,
            }
        )
    return users


def rabbitmq_access_changes(wanted, users, permissions) -> dict:
    """What to change so the broker holds the ``wanted`` users (rabbitmq_users): ``tags`` and
    ``permissions`` to set (missing or different), and ``remove``: the guest user and group
    users no group names any more. ``users`` and ``permissions`` are ``rabbitmqctl list_users``
    and ``list_permissions -p <vhost>``, as JSON. Passwords are not here: the role checks each
    one through rabbitmqctl's standard input."""
    tags = {user["user"]: sorted(_tags(user.get("tags"))) for user in users}
    rights = {p["user"]: (p["configure"], p["write"], p["read"]) for p in permissions}
    names = {user["user"] for user in wanted}
    return {
        "tags": [
            {"user": user["user"], "tags": user["tags"]}
            for user in wanted
            if tags.get(user["user"]) != sorted(user["tags"])
        ],
        "permissions": [
            {key: user[key] for key in ("user", "configure", "write", "read")}
            for user in wanted
            if rights.get(user["user"]) != (user["configure"], user["write"], user["read"])
        ],
        "remove": [
            name
            for name, have in tags.items()
            if name not in names and (name == "guest" or GROUP_USER_TAG in have)
        ],
    }


def _tags(value) -> list[str]:
    """A listed user's tags: a list (3.10's JSON formatter) or a comma-separated string."""
    if isinstance(value, list):
        return value
    return [tag.strip() for tag in str(value or "").strip("[]").split(",") if tag.strip()]


def activemq_group(user) -> str:
    """The ActiveMQ group of a group's own broker user: the one holder of its rights."""
    return f"brokerfleet-group-{user}"


def activemq_users(groups, shared_user, password) -> list[dict]:
    """The users simpleAuthenticationPlugin knows, each {user, password, group}: the shared
    one, and one per group that names its own ``broker_user``."""
    users = [{"user": str(shared_user), "password": str(password), "group": ACTIVEMQ_SHARED_GROUP}]
    for _, user in own_users(groups):
        users.append(
            {
                "user": user,
                "password": group_password(password, user),
                "group": activemq_group(user),
            }
        )
    return users


def activemq_authorization(groups) -> dict:
    """authorizationPlugin's map: ``entries`` ({kind: queue or topic, name, read, write, admin},
    each right a comma-separated list of ActiveMQ groups) and ``temporary``, who may use
    temporary destinations (replies). ActiveMQ grants the union of every entry that matches a
    destination: the shared user may do anything; a group's own user reads and administers
    (creates) only its group's queues and their dead-letter queues, and may send to any queue
    that exists (follow-up jobs for other groups, as on RabbitMQ)."""
    shared = ACTIVEMQ_SHARED_GROUP
    everyone = ",".join([shared] + [activemq_group(user) for _, user in own_users(groups)])
    entries = [
        {"kind": "queue", "name": ">", "read": shared, "write": everyone, "admin": shared},
        {"kind": "topic", "name": ">", "read": shared, "write": shared, "admin": shared},
        # JMS clients watch these for temporary destinations; the broker alone writes them.
        {
            "kind": "topic",
            "name": "ActiveMQ.Advisory.>",
            "read": everyone,
            "write": everyone,
            "admin": everyone,
        },
    ]
    for group, user in own_users(groups):
        own = activemq_group(user)
        for queue in queues.consumed_queues(group):
            for name in (queue, queues.dead_letter_queue(queue, "activemq")):
                entries.append(
                    {"kind": "queue", "name": name, "read": own, "write": own, "admin": own}
                )
    return {"entries": entries, "temporary": everyone}
