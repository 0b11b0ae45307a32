"""Who may do what on the broker: the shared application user, a user of its own for each
worker group that names one (``broker_user`` in the group), whose permissions cover only that
group's queues, so one group's code cannot read, purge or redeclare another group's jobs, and on
RabbitMQ the broker check's own user (check_user), which may look but not touch.

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
# brokerfleet-check's user on RabbitMQ. /api/nodes (the cluster's nodes) answers only users tagged
# monitoring, a tag that would show the shared user, and so every worker, every vhost's queues,
# connections and statistics: the check logs in as a user of its own instead. A tag alone does
# not open a vhost's queue list (/api/queues/<vhost>, rabbit_mgmt_util:is_authorized_vhost
# wants a permission entry on the vhost, for every tag but administrator), so it holds one that
# matches nothing: it can list, not declare, publish nor consume.
CHECK_USER_SUFFIX = "-check"
CHECK_USER_TAGS = ["monitoring"]
NO_RESOURCE = "^$"


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


def check_user(shared_user) -> str:
    """The name of brokerfleet-check's own RabbitMQ user: ``<broker_user>-check``, so two fleets
    sharing a broker under different broker users do not fight over it. inputs.py refuses a
    group broker_user of this name."""
    return f"{shared_user}{CHECK_USER_SUFFIX}"


def check_password(broker_password, shared_user) -> str:
    """The password of brokerfleet-check's own RabbitMQ user."""
    return derived_password(broker_password, f"check user {check_user(shared_user)}")


def check_credentials(kind_name: str, broker: dict) -> tuple[str, str]:
    """(user, password) brokerfleet-check logs in to the broker with: on RabbitMQ its own user
    (check_user), on ActiveMQ the shared one, as before."""
    if kind_name == "rabbitmq":
        return check_user(broker["user"]), check_password(broker["password"], broker["user"])
    return str(broker["user"]), str(broker["password"])


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
    """Every user the broker needs: the shared one (``broker_user``, all rights on the vhost),
    brokerfleet-check's (check_user: tagged monitoring, no rights on any resource) and one per
    group that names its own. Each is {user, password, tags, configure, write, read}."""
    users = [
        {
            "user": str(shared_user),
            "password": str(password),
            "tags": SHARED_USER_TAGS,
            "configure": ".*",
            "write": ".*",
            "read": ".*",
        },
        {
            "user": check_user(shared_user),
            "password": check_password(password, shared_user),
            "tags": CHECK_USER_TAGS,
            "configure": NO_RESOURCE,
            "write": NO_RESOURCE,
            "read": NO_RESOURCE,
        },
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
    users no group names any more (only those carry GROUP_USER_TAG: the shared and the check
    user are never removed here). ``users`` and ``permissions`` are ``rabbitmqctl list_users``
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
