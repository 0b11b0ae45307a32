"""The rules every input of the bundle must follow: what preflight refuses, and why.

Plain Python with no Ansible import: plugins/filter/fleet.py adapts it, pytest and hypothesis
test it directly. ``input_errors`` takes the variables a role uses, as a mapping of name to
value, and returns every problem, each naming the variable (and, for ``worker_groups``, the
group); preflight asserts the list is empty before any host changes. The argument specs
(meta/argument_specs.yml) check types; these are the rules a spec cannot express.
``worker_groups`` may differ per worker host: ``union_groups`` is what the broker declares,
``union_errors`` what refuses a group defined differently on two hosts.

Numbers may come as numeric strings, as ``-e name=value`` gives them: ``number`` converts one
or raises a ValueError naming the variable, so the sizing code converts with the same rule
that preflight checked.
"""

from __future__ import annotations

import ipaddress
import math
import posixpath
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from . import access, activemq, brokers, queues

# Defaults of the worker-group contract (README "Worker group contract").
GROUP_DEFAULTS = {
    "weight": 1,
    "min": 1,
    "max": None,
    "job_seconds": 5,
    # The longest a job may run (the worker's allowance, the stop timeout, RabbitMQ's
    # consumer_timeout). None: derived from job_seconds (sizing.max_job_seconds says how, why).
    "max_job_seconds": None,
    # brokerfleet-check's long-wait alert: the longest its queues' backlog may take to work
    # off at the rate the workers take it (a WARNING above, CRITICAL above twice that). None:
    # no alert. How long a backlog may wait is the group's own promise (minutes for
    # thumbnails, hours for a nightly import): any default would be wrong for one of them,
    # and an alert that is wrong every minute teaches an operator to ignore the check.
    "max_drain_seconds": None,
    "importance": 3,
    "environment": {},
    "recycle_after": None,
    "directory": "/",
    "user": "brokerfleet",
    "priority_levels": None,
    # Returns of a message to a quorum queue (failed deliveries) before it is dead-lettered
    # (queues.py says why 20); classic queues have no delivery limit.
    "delivery_limit": queues.DEFAULT_DELIVERY_LIMIT,
    # None: the group's workers log in as the shared broker_user.
    "broker_user": None,
}

# Every key a group may have.
GROUP_KEYS = ("name", "command", "queue", *GROUP_DEFAULTS)

# Every pattern is matched whole (re.fullmatch): with re.match and ^...$, "imports\n" matched.
# Group names become supervisord program names, file names and log directories.
GROUP_NAME = re.compile(r"[a-z][a-z0-9_]*")
MAX_GROUP_NAME = 64
# Queue names are safe in RabbitMQ policy patterns, ActiveMQ destinations (where ">" and "*" are
# wildcards and "," separates destinations), XML attributes, URLs and file names.
QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
MAX_QUEUE_NAME = 200
# An Erlang cookie that every tool quotes safely: letters and digits, as RabbitMQ makes them.
ERLANG_COOKIE = re.compile(r"[A-Za-z0-9]{20,255}")
# RabbitMQ refuses to declare a queue named amq.* (reserved for the broker's own).
RABBITMQ_RESERVED_PREFIX = "amq."
# ActiveMQ names its advisory topics and its dead-letter queues ActiveMQ.*.
ACTIVEMQ_RESERVED_PREFIX = "ActiveMQ."
# A group's own broker user (RabbitMQ user names are free text; these stay safe everywhere).
BROKER_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
# A Unix user name as useradd accepts it by default (Debian's NAME_REGEX, 32 characters).
UNIX_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
ENVIRONMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The environment the bundle gives every worker (README "Worker group contract"): a group may
# not set these, it would be overwritten or would break the worker.
BUNDLE_ENVIRONMENT = frozenset(
    {
        "BROKER_KIND",
        "BROKER_URL",
        "BROKER_URLS",
        "BROKER_STOMP_URL",
        "BROKER_QUEUE",
        "BROKER_PREFETCH",
        "FLEET_POLL_ORDER",
        "FLEET_POLL_WHEN_IDLE",
        "WORKER_GROUP",
        "WORKER_PROCESS",
        "WORKER_RECYCLE_AFTER",
        "WORKER_MAX_JOB_SECONDS",
    }
)
# C0 controls (newline, carriage return and tab among them), DEL and the C1 controls: in a
# cron line, a supervisord file or a config file they end the line or start another one.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A cron minute field: * or */N, or a list of minutes and ranges (0, 0-29, 0,30), each 0-59.
CRON_MINUTE = re.compile(
    r"\*(/([1-9]|[1-5][0-9]))?|[0-5]?[0-9](-[0-5]?[0-9])?(,[0-5]?[0-9](-[0-5]?[0-9])?)*"
)
# A host name label; underscores are let through, as inventories use them in host aliases.
HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
# supervisord's byte sizes: a number, optionally KB, MB or GB.
SUPERVISOR_BYTES = re.compile(r"[0-9]+(KB|MB|GB)?")
BROKER_KINDS = brokers.BROKER_KINDS
# RabbitMQ queue types for the worker groups' queues (broker_queue_type).
QUEUE_TYPES = queues.QUEUE_TYPES
# What a numeric string looks like (as -e gives it); no blanks, no "nan", no "inf".
# Templates render some of them as given, hence no "+" and no leading zeros either.
INTEGER_TEXT = re.compile(r"-?(0|[1-9][0-9]*)")
DECIMAL_TEXT = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?|-?\.[0-9]+")
# Longest job a group may declare: one day (job_seconds, max_job_seconds; the reference worker
# takes no longer job either), and the longest autoscale horizon.
MAX_JOB_SECONDS = 86400
# Longest max_drain_seconds: a week. A backlog allowed to wait longer is not one for a check
# that runs every minute, and a larger figure is more likely milliseconds than seconds.
MAX_DRAIN_SECONDS = 7 * 86400


@dataclass(frozen=True)
class Number:
    """What a numeric variable may hold: an integer or any finite number, within bounds
    (``minimum``/``maximum`` inclusive, ``above`` exclusive); ``optional``: unset (None or
    "") is allowed."""

    integer: bool = False
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    optional: bool = False

    def holds(self, value) -> bool:
        return (
            (self.minimum is None or value >= self.minimum)
            and (self.maximum is None or value <= self.maximum)
            and (self.above is None or value > self.above)
        )

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.minimum is not None and self.maximum is not None:
            return f"{kind} within {self.minimum:g}-{self.maximum:g}"
        bounds = []
        if self.above is not None:
            bounds.append(f"> {self.above:g}")
        if self.minimum is not None:
            bounds.append(f">= {self.minimum:g}")
        if self.maximum is not None:
            bounds.append(f"<= {self.maximum:g}")
        return " ".join([kind, " and ".join(bounds)]).strip()


PORT = Number(integer=True, minimum=1, maximum=65535)

# Every numeric variable of the bundle, global or of a role (each role's defaults/main.yml
# explains it).
NUMBERS = {
    # fleet_contract
    "fleet_cpus": Number(integer=True, minimum=1, optional=True),
    "workers_per_cpu": Number(above=0),
    "worker_memory_mb": Number(integer=True, minimum=1),
    "fleet_autoscale_horizon": Number(integer=True, minimum=0, maximum=MAX_JOB_SECONDS),
    "broker_port": PORT,
    "broker_openwire_port": PORT,
    "broker_stomp_port": PORT,
    # rabbitmq
    "rabbitmq_management_port": PORT,
    "rabbitmq_prometheus_port": PORT,
    "rabbitmq_memory_fraction": Number(minimum=0.1, maximum=0.9),
    "rabbitmq_memory_limit_mb": Number(integer=True, minimum=1, optional=True),
    "rabbitmq_queue_max_length": Number(integer=True, minimum=0),
    # 0 would mean no limit: one greedy consumer could take a whole queue. 65535 is the most
    # basic.qos carries.
    "rabbitmq_default_consumer_prefetch": Number(integer=True, minimum=1, maximum=65535),
    # How long the workers stay held around a single broker's restart should the play not
    # start them again (brokerfleet-check quiesce --for); 0: not stopped at all.
    "rabbitmq_restart_quiesce_seconds": Number(integer=True, minimum=0, maximum=MAX_JOB_SECONDS),
    # activemq
    "activemq_jmx_port": PORT,
    "activemq_heap_mb": Number(integer=True, minimum=activemq.MIN_HEAP_MB, optional=True),
    "activemq_heap_fraction": Number(minimum=0.05, maximum=0.75),
    "activemq_memory_percent": Number(integer=True, minimum=10, maximum=90),
    "activemq_store_limit_mb": Number(integer=True, minimum=activemq.MIN_STORE_MB, optional=True),
    "activemq_temp_limit_mb": Number(integer=True, minimum=activemq.MIN_TEMP_MB, optional=True),
    # 0 is safe on ActiveMQ: the consumer pulls one message at a time.
    "activemq_default_queue_prefetch": Number(integer=True, minimum=0),
    "activemq_max_connections": Number(integer=True, minimum=1),
    "activemq_max_frame_size_mb": Number(integer=True, minimum=1),
    "activemq_restart_quiesce_seconds": Number(integer=True, minimum=0, maximum=MAX_JOB_SECONDS),
    # fleet_checks (fleet_checks_load_low must also stay below fleet_checks_load_high)
    "fleet_checks_load_high": Number(minimum=0.1, maximum=4),
    "fleet_checks_load_low": Number(above=0),
    "fleet_checks_runs": Number(integer=True, minimum=1, maximum=60),
    # worker_fleet
    "worker_fleet_os_reserve_mb": Number(integer=True, minimum=0),
    "worker_fleet_broker_reserve_mb": Number(integer=True, minimum=0),
    "worker_fleet_startretries": Number(integer=True, minimum=0),
    "worker_fleet_log_backups": Number(integer=True, minimum=0),
}

# Listeners of one host that must not share a port: each set is checked when a role passes
# all of its variables.
LISTENERS = (
    ("broker_port", "rabbitmq_management_port"),
    ("broker_port", "rabbitmq_prometheus_port"),
    ("rabbitmq_management_port", "rabbitmq_prometheus_port"),
    ("broker_openwire_port", "broker_stomp_port", "activemq_jmx_port"),
)


# --- numbers ----------------------------------------------------------------------------------


def is_number(value) -> bool:
    """A finite int or float; a bool is not a number here (YAML's yes/true would be 1)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def number(name: str, value, rule: Number | None = None):
    """``value`` of variable ``name`` as an int or float that follows ``rule`` (by default the
    variable's rule in NUMBERS), or None when it is unset and the rule allows that.

    A numeric string ("8", "0.35", as ``-e`` gives them) is converted; anything else that is not
    a finite number (a bool, nan, inf, "many") raises a ValueError naming the variable.
    """
    rule = rule or NUMBERS.get(name, Number())
    if value is None or (isinstance(value, str) and value == ""):
        if rule.optional:
            return None
        raise ValueError(f"{name} must be {rule.describe()}, got {value!r}")
    converted = _parse_number(value, rule.integer)
    if converted is None or not rule.holds(converted):
        raise ValueError(f"{name} must be {rule.describe()}, got {value!r}")
    return converted


def _parse_number(value, integer: bool):
    if isinstance(value, str):
        try:
            if INTEGER_TEXT.fullmatch(value):
                return int(value)
            if integer or not DECIMAL_TEXT.fullmatch(value):
                return None
            value = float(value)
        except ValueError:  # more digits than int() takes
            return None
    if integer:
        return value if is_integer(value) else None
    return value if is_number(value) else None


def flag(name: str, value) -> bool:
    """A boolean variable: true or false, or the strings -e and YAML 1.1 give for them."""
    if isinstance(value, bool):
        return value
    text = str(value).lower() if isinstance(value, str | int) else None
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


# --- text -------------------------------------------------------------------------------------


def control_error(name: str, value, secret: bool = False) -> str | None:
    """An error when text ``value`` holds a control character (newline, tab, ...), else None.
    A ``secret`` is never shown."""
    if isinstance(value, str) and CONTROL.search(value):
        shown = "" if secret else f", got {value!r}"
        return f"{name} must not contain control characters (newline, tab, ...){shown}"
    return None


def _text(required: bool, secret: bool = False) -> Callable[[str, object], list[str]]:
    """A string without control characters; ``required``: not empty either."""

    def check(name, value):
        shown = "" if secret else f", got {value!r}"
        if value is None or value == "":
            if not required:
                return []
            if secret:
                return [f"{name} is required and must not be empty (there is no default)"]
            return [f"{name} must not be empty{shown}"]
        if not isinstance(value, str):
            return [f"{name} must be a string{shown}"]
        error = control_error(name, value, secret)
        if not error and secret and value != value.strip():
            # rabbitmqctl trims what it reads from standard input, the only way the role gives
            # it a password that keeps it off every command line.
            error = f"{name} must not begin or end with a blank"
        return [error] if error else []

    return check


def host_error(name: str, value) -> str | None:
    """An error unless ``value`` is a host name, an IPv4 or an IPv6 address (bare, or in
    brackets as a URL has it)."""
    if not isinstance(value, str) or value == "":
        return f"{name} must be a host name or an IP address, got {value!r}"
    address = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        parsed = None
    if parsed is not None:
        if getattr(parsed, "scope_id", None):
            return f"{name} must be an address without a zone (%), got {value!r}"
        return None
    if address != value or len(value) > 253:
        return f"{name} must be a host name or an IP address, got {value!r}"
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    if all(HOST_LABEL.fullmatch(label) for label in labels):
        return None
    return f"{name} must be a host name or an IP address, got {value!r}"


def ip_error(name: str, value) -> str | None:
    """An error unless ``value`` is a bare IPv4 or IPv6 address. RabbitMQ's listeners take
    nothing else: management.tcp.ip and prometheus.tcp.ip are checked with its schema's is_ip
    (inet:parse_address), listeners.tcp.default is converted to an IP, a host name or brackets
    fail both, and a node whose rabbitmq.conf fails does not start."""
    error = f"{name} must be an IP address (RabbitMQ takes no host name here), got {value!r}"
    if not isinstance(value, str):
        return error
    try:
        parsed = ipaddress.ip_address(value)
    except ValueError:
        return error
    if getattr(parsed, "scope_id", None):
        return f"{name} must be an address without a zone (%), got {value!r}"
    return None


def _ip(name, value):
    error = ip_error(name, value)
    return [error] if error else []


def _host(name, value):
    if name == "broker_host" and value in (None, ""):
        return ["broker_host is empty and the inventory has no host in group brokers"]
    error = host_error(name, value)
    return [error] if error else []


def _hosts(name, value):
    """A list of hosts (every broker node), each a host name or an IP address."""
    if not isinstance(value, list):
        return [f"{name} must be a list of host names or addresses, got {value!r}"]
    errors = [host_error(f"{name}[{index}]", host) for index, host in enumerate(value)]
    return [error for error in errors if error]


def _erlang_cookie(name, value):
    """The secret the nodes of a cluster share; never shown in a message."""
    if value in (None, ""):
        return [
            f"{name} is required when brokers holds a RabbitMQ cluster: set 20 or more "
            "random letters and digits, from a vault, the same for every node"
        ]
    if isinstance(value, str) and ERLANG_COOKIE.fullmatch(value):
        return []
    return [f"{name} must be 20 to 255 letters and digits (the value is not shown)"]


def _path(empty_allowed: bool):
    """An absolute path without control characters (or "", when ``empty_allowed``)."""

    def check(name, value):
        if empty_allowed and value in (None, ""):
            return []
        if not isinstance(value, str) or not posixpath.isabs(value):
            return [f"{name} must be an absolute path, got {value!r}"]
        error = control_error(name, value)
        return [error] if error else []

    return check


def _cron_minute(name, value):
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and CRON_MINUTE.fullmatch(value):
        return []
    return [
        f"{name} ({value!r}) is not a cron minute field: use *, */N, a minute 0-59, a range "
        "such as 0-29, or a list such as 0,30"
    ]


def _broker_kind(name, value):
    if value in BROKER_KINDS:
        return []
    return [f"{name} must be one of {', '.join(BROKER_KINDS)}, got {value!r}"]


def _queue_type(name, value):
    if value in QUEUE_TYPES:
        return []
    return [f"{name} must be one of {', '.join(QUEUE_TYPES)}, got {value!r}"]


def _flag(name, value):
    try:
        flag(name, value)
    except ValueError as error:
        return [str(error)]
    return []


def _log_size(name, value):
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return []
    if isinstance(value, str) and SUPERVISOR_BYTES.fullmatch(value):
        return []
    return [f"{name} must be a size in bytes, optionally with KB, MB or GB (10MB), got {value!r}"]


def _config_mapping(name, value):
    """Extra configuration keys rendered into a file, one ``key = value`` a line."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return [f"{name} must be a mapping, got {value!r}"]
    errors = []
    for key, item in value.items():
        for text in (key, item):
            error = control_error(f"{name}[{key!r}]", str(text))
            if error:
                errors.append(error)
                break
    return errors


# Every variable input_errors knows, by its check (numbers are in NUMBERS).
TEXT_CHECKS = {
    "broker_kind": _broker_kind,
    "broker_queue_type": _queue_type,
    "broker_host": _host,
    "broker_hosts": _hosts,
    "rabbitmq_erlang_cookie": _erlang_cookie,
    "broker_user": _text(required=True),
    "broker_vhost": _text(required=True),
    "broker_password": _text(required=True, secret=True),
    "fleet_allow_root_workers": _flag,
    "rabbitmq_amqp_address": _ip,
    "rabbitmq_management_address": _ip,
    "rabbitmq_prometheus_address": _ip,
    "rabbitmq_extra_config": _config_mapping,
    "activemq_bind_address": _host,
    "fleet_checks_minute": _cron_minute,
    "fleet_checks_mailto": _text(required=False),
    "fleet_checks_alert_command": _text(required=False),
    "fleet_checks_prometheus_dir": _path(empty_allowed=True),
    "fleet_checks_load_source": _path(empty_allowed=True),
    "fleet_checks_backlog_source": _path(empty_allowed=True),
    "worker_fleet_log_dir": _path(empty_allowed=False),
    "worker_fleet_log_maxbytes": _log_size,
}


# --- all of a role's variables ----------------------------------------------------------------


def input_errors(variables: dict) -> list[str]:
    """Every problem with the ``variables`` a role uses (name: value), each naming its variable.

    ``worker_groups`` is checked with ``group_errors``, for the ``broker_kind`` and
    ``fleet_allow_root_workers`` given beside it. A name this module has no rule for is a
    mistake in the calling role: it raises a ValueError.
    """
    if not isinstance(variables, dict):
        raise ValueError(f"input_errors needs a mapping of variables, got {variables!r}")
    errors = []
    numbers = {}
    for name, value in variables.items():
        if name == "worker_groups":
            continue
        if name in NUMBERS:
            try:
                numbers[name] = number(name, value)
            except ValueError as error:
                errors.append(str(error))
        elif name in TEXT_CHECKS:
            errors.extend(TEXT_CHECKS[name](name, value))
        else:
            raise ValueError(f"brokerfleet.inputs has no rule for the variable {name!r}")
    errors.extend(_related_errors(numbers))
    if "worker_groups" in variables:
        kind = variables.get("broker_kind", "rabbitmq")
        try:
            allow_root = flag("fleet_allow_root_workers", variables.get("fleet_allow_root_workers"))
        except ValueError:
            allow_root = False  # reported above
        errors.extend(
            group_errors(
                variables["worker_groups"],
                kind if kind in BROKER_KINDS else "rabbitmq",
                allow_root=allow_root,
                shared_user=variables.get("broker_user"),
            )
        )
    return errors


def topology_errors(broker_kind, broker_hosts, queue_type="classic") -> list[str]:
    """What is wrong with the ``brokers`` inventory group (``broker_hosts``, its host names) for
    ``broker_kind`` and ``broker_queue_type``, each message saying what is supported.

    RabbitMQ runs on one host, or as a cluster of an odd number of nodes, at least 3: with
    pause_minority an even split leaves no side with a majority, and a 2-node cluster stops
    when either node does. ActiveMQ runs on one host (no network of brokers is built).
    Quorum queues belong to RabbitMQ."""
    hosts = list(broker_hosts or [])
    listed = ", ".join(map(str, hosts))
    errors = []
    if broker_kind == "activemq":
        if len(hosts) > 1:
            errors.append(
                f"brokers holds {len(hosts)} hosts ({listed}), but broker_kind activemq runs "
                "on one broker host only (this bundle builds no network of brokers or "
                "failover pair): list one host in brokers, or use broker_kind rabbitmq for a "
                "cluster"
            )
        if queue_type != "classic":
            errors.append(f"broker_queue_type {queue_type!r} is RabbitMQ's; ActiveMQ has none")
    elif broker_kind == "rabbitmq" and len(hosts) > 1 and (len(hosts) < 3 or len(hosts) % 2 == 0):
        errors.append(
            f"brokers holds {len(hosts)} hosts ({listed}): a RabbitMQ cluster needs an odd "
            "number of nodes, at least 3 (with pause_minority an even split leaves no "
            "majority); list 1, 3, 5... hosts in brokers"
        )
    return errors


def _related_errors(numbers: dict) -> list[str]:
    """Rules between variables, checked once each of them is a valid number."""
    errors = []
    low, high = numbers.get("fleet_checks_load_low"), numbers.get("fleet_checks_load_high")
    if low is not None and high is not None and low >= high:
        errors.append(
            f"fleet_checks_load_low ({low:g}) must be below fleet_checks_load_high ({high:g})"
        )
    for listeners in LISTENERS:
        if not all(numbers.get(name) is not None for name in listeners):
            continue
        by_port = {}
        for name in listeners:
            by_port.setdefault(numbers[name], []).append(name)
        for port, names in by_port.items():
            if len(names) > 1:
                both = "both" if len(names) == 2 else "all"
                errors.append(
                    f"port collision: {' and '.join(names)} are {both} {port}; each listener "
                    "needs its own port"
                )
    return errors


# --- worker groups ----------------------------------------------------------------------------


def group_errors(
    groups, broker_kind: str = "rabbitmq", allow_root: bool = False, shared_user=None
) -> list[str]:
    """Every contract violation in ``worker_groups``, each naming the variable and the group.

    An empty list means the groups are valid on ``broker_kind``. ``allow_root``
    (fleet_allow_root_workers) lets a group run as root. ``shared_user`` is broker_user: no
    group may name it, nor the broker check's user made from it (access.check_user), as its own.
    """
    if not isinstance(groups, list):
        return [f"worker_groups must be a list of groups, got {type(groups).__name__}"]
    errors = []
    seen, broker_users = set(), set()
    taken = (shared_user, access.check_user(shared_user)) if isinstance(shared_user, str) else ()
    for index, group in enumerate(groups):
        if not isinstance(group, dict):
            errors.append(f"worker_groups[{index}] must be a mapping, got {group!r}")
            continue
        name = group.get("name")
        where = _where(index, name)
        errors.extend(f"{where}: {e}" for e in _one_group_errors(group, broker_kind, allow_root))
        if isinstance(name, str):
            if name in seen:
                errors.append(f"{where}: name is used by an earlier group; names must be unique")
            seen.add(name)
        own_user = group.get("broker_user")
        if isinstance(own_user, str):
            if own_user in (*taken, *broker_users):
                errors.append(
                    f"{where}: broker_user {own_user!r} is the shared broker_user, the broker "
                    "check's user (broker_user followed by -check) or another group's: each "
                    "group's own broker user must be its alone"
                )
            broker_users.add(own_user)
    errors.extend(_queue_errors(groups, broker_kind))
    return errors


def _one_group_errors(group: dict, broker_kind: str, allow_root: bool) -> list[str]:
    errors = [
        f"unknown key {key!r}; a group's keys are {', '.join(GROUP_KEYS)}"
        for key in group
        if key not in GROUP_KEYS
    ]
    name = group.get("name")
    if not isinstance(name, str) or not GROUP_NAME.fullmatch(name) or len(name) > MAX_GROUP_NAME:
        errors.append(f"name must match {GROUP_NAME.pattern} (at most {MAX_GROUP_NAME} characters)")
    errors.extend(command_errors(group.get("command")))
    if "queue" in group:
        errors.extend(queue_name_errors(group["queue"], broker_kind))
    if "directory" in group:
        directory = group["directory"]
        if not isinstance(directory, str) or not posixpath.isabs(directory):
            errors.append(f"directory must be an absolute path, got {directory!r}")
        elif error := control_error("directory", directory):
            errors.append(error)
    if "user" in group:
        errors.extend(user_errors(group["user"], allow_root))
    if group.get("broker_user") is not None:
        errors.extend(broker_user_errors(group["broker_user"]))
    errors.extend(_group_number_errors(group))
    if "environment" in group:
        errors.extend(environment_errors(group["environment"]))
    if group.get("priority_levels") is not None:
        errors.extend(queues.priority_errors(group["priority_levels"]))
    return errors


def command_errors(command) -> list[str]:
    """What is wrong with a group's ``command``: it must split into words like a POSIX shell
    splits them (supervisord does the same), the first naming the program."""
    if command is None or command == "":
        return ["command is required"]
    if not isinstance(command, str):
        return [f"command must be a string, got {command!r}"]
    if error := control_error("command", command):
        return [error]
    try:
        words = shlex.split(command)
    except ValueError as error:
        return [
            f"command cannot be split into words like a shell does ({error}: an unbalanced "
            f"quote or a trailing backslash?), got {command!r}"
        ]
    if not words or not words[0]:
        return [f"command must name a program to run, got {command!r}"]
    return []


def queue_name_errors(queue, broker_kind: str = "rabbitmq") -> list[str]:
    """What is wrong with a group's ``queue`` as a name on ``broker_kind``."""
    if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
        return [
            f"queue must match {QUEUE_NAME.pattern} (letters, digits and _ . : -, starting with "
            f"a letter or digit), got {queue!r}"
        ]
    if len(queue) > MAX_QUEUE_NAME:
        return [f"queue must be at most {MAX_QUEUE_NAME} characters, got {len(queue)}"]
    if queue.startswith(RABBITMQ_RESERVED_PREFIX):
        return [f"queue {queue!r}: names starting with amq. are reserved by RabbitMQ"]
    if broker_kind == "activemq" and queue.startswith(ACTIVEMQ_RESERVED_PREFIX):
        return [f"queue {queue!r}: names starting with ActiveMQ. are reserved by ActiveMQ"]
    return []


def broker_user_errors(user) -> list[str]:
    """What is wrong with a group's own ``broker_user`` (plugins/module_utils/access.py)."""
    if not isinstance(user, str) or not BROKER_USER.fullmatch(user):
        return [f"broker_user must match {BROKER_USER.pattern}, got {user!r}"]
    return []


def user_errors(user, allow_root: bool = False) -> list[str]:
    """What is wrong with a group's ``user``; root only with fleet_allow_root_workers."""
    if not isinstance(user, str) or not UNIX_USER.fullmatch(user):
        return [f"user must be a Unix user name matching {UNIX_USER.pattern}, got {user!r}"]
    if user == "root" and not allow_root:
        return [
            "user root is refused: workers run unprivileged (set fleet_allow_root_workers: true "
            "if this group must run as root)"
        ]
    return []


def _group_number_errors(group: dict) -> list[str]:
    errors = []
    weight = group.get("weight", GROUP_DEFAULTS["weight"])
    if not is_number(weight) or weight <= 0:
        errors.append(f"weight must be a number > 0, got {weight!r}")
    low = group.get("min", GROUP_DEFAULTS["min"])
    if not is_integer(low) or low < 0:
        errors.append(f"min must be an integer >= 0, got {low!r}")
        low = 0
    high = group.get("max")
    if high is not None and not is_integer(high):
        errors.append(f"max must be an integer, got {high!r}")
    elif high is not None and high < low:
        errors.append(f"max ({high}) must be >= min ({low})")
    seconds = group.get("job_seconds", GROUP_DEFAULTS["job_seconds"])
    if not is_number(seconds) or not 0 < seconds <= MAX_JOB_SECONDS:
        errors.append(f"job_seconds must be a number > 0 and <= {MAX_JOB_SECONDS}, got {seconds!r}")
        seconds = None
    longest = group.get("max_job_seconds")
    if error := _optional_seconds_error(group, "max_job_seconds", MAX_JOB_SECONDS):
        errors.append(error)
    elif longest is not None and seconds is not None and longest < seconds:
        errors.append(
            f"max_job_seconds ({longest:g}) must be >= job_seconds ({seconds:g}), the typical job"
        )
    if error := _optional_seconds_error(group, "max_drain_seconds", MAX_DRAIN_SECONDS):
        errors.append(error)
    importance = group.get("importance", GROUP_DEFAULTS["importance"])
    if not is_integer(importance) or not 1 <= importance <= 5:
        errors.append(f"importance must be 1 (shed first) to 5 (never shed), got {importance!r}")
    recycle = group.get("recycle_after")
    if recycle is not None and (not is_integer(recycle) or recycle < 1):
        errors.append(f"recycle_after must be an integer >= 1 when set, got {recycle!r}")
    limit = group.get("delivery_limit", GROUP_DEFAULTS["delivery_limit"])
    if not is_integer(limit) or limit < 1:
        errors.append(f"delivery_limit must be an integer >= 1, got {limit!r}")
    return errors


def _optional_seconds_error(group: dict, key: str, maximum: int) -> str | None:
    """An error unless the group's ``key`` is unset or a number of seconds > 0, <= maximum."""
    value = group.get(key)
    if value is None or (is_number(value) and 0 < value <= maximum):
        return None
    return f"{key} must be a number > 0 and <= {maximum} when set, got {value!r}"


def environment_errors(environment) -> list[str]:
    """What is wrong with a group's ``environment``: a mapping of variable names to strings or
    finite numbers, none of them a variable the bundle sets itself."""
    if not isinstance(environment, dict):
        return [f"environment must be a mapping of NAME: value, got {environment!r}"]
    errors = []
    for key, value in environment.items():
        where = f"environment[{key!r}]"
        if not isinstance(key, str) or not ENVIRONMENT_NAME.fullmatch(key):
            errors.append(f"{where}: the name must match {ENVIRONMENT_NAME.pattern}")
        elif key in BUNDLE_ENVIRONMENT:
            errors.append(
                f"{where}: {key} is set by the bundle itself for every worker; use another name"
            )
        if isinstance(value, str):
            if error := control_error(where, value):
                errors.append(error)
        elif not is_number(value):
            errors.append(
                f"{where} must be a string or a finite number, got {value!r} (quote it in YAML "
                "if a string is meant)"
            )
    return errors


def _queue_errors(groups: list, broker_kind: str, where=None, reported=None) -> list[str]:
    """Queues that two groups would fight over: a consumed queue that is another queue's
    dead-letter queue, or one consumed by two groups when either has priority levels (two
    groups without levels may drain one queue, README "Worker group contract").

    ``where(index)`` names the group at ``index`` in the messages (default
    ``worker_groups[index] (name ...)``); ``reported(i, j)`` is true for a pair of groups
    whose clash another check already reports (union_errors: both on one worker host)."""
    where = where or (lambda index: _where(index, groups[index]["name"]))
    owners = {}  # consumed queue -> [(index, plain)]
    dead_of = {}  # dead-letter queue -> (index, the queue it serves)
    for index, group in enumerate(groups):
        if not _queues_are_checkable(group, broker_kind):
            continue
        plain = not group.get("priority_levels")
        for queue in queues.consumed_queues(group):
            owners.setdefault(queue, []).append((index, plain))
            dead_of.setdefault(queues.dead_letter_queue(queue, broker_kind), (index, queue))
    errors = []
    for queue, consumers in owners.items():
        first, first_plain = consumers[0]
        for index, plain in consumers[1:]:
            if not (plain and first_plain) and not (reported and reported(first, index)):
                errors.append(
                    f"{where(index)}: queue {queue!r} is also consumed by {where(first)}; only "
                    "groups without priority_levels may share a queue"
                )
        if queue in dead_of:
            owner, served = dead_of[queue]
            consumer = next(
                (i for i, _ in consumers if not (reported and reported(owner, i))), None
            )
            if consumer is not None:
                errors.append(
                    f"{where(consumer)}: queue {queue!r} is the dead-letter queue of queue "
                    f"{served!r} of {where(owner)}; choose another queue"
                )
    return errors


def _where(index: int, name) -> str:
    return f"worker_groups[{index}] (name {name!r})"


def _queues_are_checkable(group, broker_kind: str) -> bool:
    """A group whose name, queue and priority levels are valid (else its own errors say so)."""
    if not isinstance(group, dict) or not isinstance(group.get("name"), str):
        return False
    if "queue" in group and queue_name_errors(group["queue"], broker_kind):
        return False
    if "queue" not in group and not GROUP_NAME.fullmatch(group["name"]):
        return False
    levels = group.get("priority_levels")
    return levels is None or (isinstance(levels, dict) and not queues.priority_errors(levels))


# --- worker groups across worker hosts --------------------------------------------------------

# What the broker makes of a group: its queues (the queue, or one per priority level), its own
# user, and how long the broker check lets its backlog wait. A group that runs on several
# worker hosts must agree on these everywhere; its other keys (command, weight, min, max,
# user...) size and run the workers of each host on its own.
BROKER_FACING_KEYS = ("queue", "priority_levels", "broker_user", "max_drain_seconds")


def union_groups(groups_by_host: dict, fallback=None) -> list:
    """The worker groups the broker declares: every group of every worker host, each name once,
    as the first host (in inventory order) that has it defines it, in first-seen order.

    ``groups_by_host`` maps each worker host to its ``worker_groups``; a host without a list
    there (unset, None) is skipped, as is an entry without a name (the host's own preflight
    refuses those). ``fallback`` (the calling host's own worker_groups) is the answer when no
    host has a list: no worker host in the inventory, or none that sets worker_groups itself.
    """
    lists = [groups for groups in groups_by_host.values() if isinstance(groups, list)]
    if not lists:
        return [] if fallback is None else fallback
    union, seen = [], set()
    for groups in lists:
        for group in groups:
            name = group.get("name") if isinstance(group, dict) else None
            if isinstance(name, str) and name not in seen:
                seen.add(name)
                union.append(group)
    return union


def union_errors(groups_by_host: dict, broker_kind: str = "rabbitmq") -> list[str]:
    """What stops the broker from serving the worker hosts' groups together (``groups_by_host``
    as for union_groups), each message naming the group and the hosts.

    A group name on two hosts is one group for the broker: its queue (default: its name),
    priority_levels, broker_user and max_drain_seconds must be the same on both. Two groups of
    different hosts must not clash over a queue or a broker user any more than two groups of
    one host may (group_errors); a clash within one host is left to that host's own check."""
    # An unknown broker_kind is input_errors' to report; the queues are checked as RabbitMQ's.
    broker_kind = broker_kind if broker_kind in BROKER_KINDS else "rabbitmq"
    defined = {}  # group name -> [(host, group)], in inventory order
    for host, groups in groups_by_host.items():
        if not isinstance(groups, list):
            continue
        for group in groups:
            name = group.get("name") if isinstance(group, dict) else None
            if isinstance(name, str):
                defined.setdefault(name, []).append((host, group))
    errors = []
    for name, definitions in defined.items():
        first_host, first = definitions[0]
        for host, group in definitions[1:]:
            if host == first_host:
                continue  # a name twice in one list: that host's own check refuses it
            for key in BROKER_FACING_KEYS:
                if _broker_facing(first, key) != _broker_facing(group, key):
                    errors.append(
                        f"worker_groups: group {name!r} has {key} "
                        f"{_broker_facing(first, key)!r} on host {first_host} but "
                        f"{_broker_facing(group, key)!r} on host {host}; the broker declares a "
                        "group's queues and broker user, and its check watches them, once for "
                        "all worker hosts, so queue (default: the name), priority_levels, "
                        "broker_user and max_drain_seconds must be the same on every host that "
                        "defines the group: make them equal, or rename one of the groups"
                    )
    union = [definitions[0][1] for definitions in defined.values()]
    hosts = [{host for host, _ in definitions} for definitions in defined.values()]
    origin = [definitions[0][0] for definitions in defined.values()]

    def where(index):
        return f"worker_groups of host {origin[index]} (name {union[index]['name']!r})"

    def together(first, second):
        return bool(hosts[first] & hosts[second])

    errors.extend(_queue_errors(union, broker_kind, where, together))
    owner_of = {}  # a group's own broker user -> index of the first group that names it
    for index, group in enumerate(union):
        user = group.get("broker_user")
        if not isinstance(user, str) or not user:
            continue
        first = owner_of.setdefault(user, index)
        if first != index and not together(first, index):
            errors.append(
                f"{where(index)}: broker_user {user!r} is also the broker_user of "
                f"{where(first)}: each group's own broker user must be its alone; give one of "
                "them another broker_user"
            )
    return errors


def group_definitions(groups_by_host: dict, fallback=None) -> list:
    """Every worker host's definition of every group, a group defined on three hosts three
    times (``groups_by_host`` and ``fallback`` as for union_groups): what a broker setting that
    must suit every worker is computed over (RabbitMQ's consumer_timeout), where union_groups
    keeps only the first definition of each group, and job_seconds or max_job_seconds may
    differ between hosts."""
    lists = [groups for groups in groups_by_host.values() if isinstance(groups, list)]
    if not lists:
        return [] if fallback is None else fallback
    return [
        group
        for groups in lists
        for group in groups
        if isinstance(group, dict) and isinstance(group.get("name"), str)
    ]


def _broker_facing(group: dict, key: str):
    """The value of a broker-facing ``key`` of ``group`` as the broker reads it: queue defaults
    to the name; an empty priority_levels or broker_user, an unset max_drain_seconds, is none."""
    if key == "queue":
        return group.get("queue") or group.get("name")
    return group.get(key) or None
