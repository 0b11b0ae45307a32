"""Every file the controller writes for a program on the hosts, rendered here and only here.

    /etc/brokerfleet/fleet.json        fleet_manifest   brokerfleet-check workers, status;
                                                        the play's preview (fleet_changes)
    /etc/brokerfleet/checks.json       checks_settings  brokerfleet-check (its cron line is bare)
    /etc/brokerfleet/broker.json       broker_config    brokerfleet-check broker, status
    /etc/brokerfleet/workers/*.json    worker_specs     brokerfleet-exec, which starts workers

Each holds a ``format`` number that the host program checks: a file of another format is
refused (the checks report UNKNOWN, brokerfleet-exec does not start), never half understood.
Bump a format whenever a host program could misread the file without the change. The host
programs read these files back as written; tests/unit/test_hostfiles.py proves the round trip.

Plain Python, no Ansible import (see plugins/filter/fleet.py).
"""

from __future__ import annotations

import hashlib
import json
import shlex

from . import access, brokers, inputs, queues, sizing

FLEET_FORMAT = 1
CHECKS_FORMAT = 1
BROKER_FORMAT = 1
WORKER_SPEC_FORMAT = 1


def fleet_manifest(plan, cpus: int, budget: int, specs=None, program_settings=None) -> dict:
    """What the play rendered on a worker host: per group its supervisord ``programs`` (the
    first ``processes`` start by themselves, the rest are autoscale's spare slots) and what the
    load guard and status need. No secrets: mode 0644.

    ``revision`` changes whenever the group's program sections change (its spec file, user,
    stopwaitsecs, or the role's ``program_settings`` such as startretries and logs), that is
    whenever supervisord restarts its running programs: fleet_changes compares it."""
    keys = ("name", "programs", "processes", "min", "max", "importance", "job_seconds")
    groups = [
        {
            **{key: group[key] for key in keys},
            "queues": list(dict.fromkeys(group["poll_order"] + group["poll_when_idle"])),
            "revision": _digest(
                [
                    (specs or {}).get(group["name"], {}).get("file"),
                    group["user"],
                    group["stopwaitsecs"],
                    program_settings,
                ]
            )[:12],
        }
        for group in plan
    ]
    return {"format": FLEET_FORMAT, "cpus": cpus, "budget": budget, "groups": groups}


def fleet_changes(before, after) -> list[dict]:
    """What switching a host from manifest ``before`` (None or another format: nothing ran) to
    ``after`` does to its workers, per group in ``after``'s order then the removed ones:
    {group, processes (before, after), start, stop, restart}, each a list of programs, for
    the groups where something happens. A program restarts when it runs before and after and
    its group's revision changed; autoscale's and the load guard's own moves are not counted."""
    old = {}
    if isinstance(before, dict) and before.get("format") == FLEET_FORMAT:
        old = {group["name"]: group for group in before["groups"]}
    new = {group["name"]: group for group in after["groups"]}
    changes = []
    for name in list(new) + [name for name in old if name not in new]:
        was, will = old.get(name), new.get(name)
        running = was["programs"][: was["processes"]] if was else []
        wanted = will["programs"][: will["processes"]] if will else []
        revised = bool(was and will and was.get("revision") != will["revision"])
        change = {
            "group": name,
            "processes": [len(running), len(wanted)],
            "start": [p for p in wanted if p not in running],
            "stop": [p for p in running if p not in wanted],
            "restart": [p for p in wanted if p in running] if revised else [],
        }
        if change["start"] or change["stop"] or change["restart"]:
            changes.append(change)
    return changes


def checks_settings(
    load_high,
    load_low,
    runs,
    autoscale_horizon=0,
    alert_command="",
    prometheus_dir="",
    load_source=None,
    backlog_source=None,
) -> dict:
    """How brokerfleet-check runs on this host (the fleet_checks role's variables, checked
    there): the load guard's thresholds, autoscale's horizon, the alert hook, where Prometheus
    textfiles go, and the drill inputs. Root's only (0600): an alert command may hold a token.
    """
    return {
        "format": CHECKS_FORMAT,
        "load_high": float(inputs.number("fleet_checks_load_high", load_high)),
        "load_low": float(inputs.number("fleet_checks_load_low", load_low)),
        "runs": inputs.number("fleet_checks_runs", runs),
        "autoscale_horizon": float(inputs.number("fleet_autoscale_horizon", autoscale_horizon)),
        "alert_command": alert_command or None,
        "prometheus_dir": prometheus_dir or None,
        "load_source": load_source or None,
        "backlog_source": backlog_source or None,
    }


def broker_config(groups, broker: dict) -> dict:
    """How brokerfleet-check reaches this host's broker, and which queues it watches (each
    consumed queue, its group, its priority level, its length limit, how long its backlog may
    wait, its dead-letter queue and that queue's length limit: queues.checked_queues).
    ``broker`` holds kind, user, password and what the kind's ``check_access`` needs
    (plugins/module_utils/brokers.py); ``user`` and ``password`` are broker_user's and
    broker_password. On RabbitMQ the check logs in as its own user, made from them
    (access.check_credentials); on ActiveMQ as broker_user. On RabbitMQ ``broker`` also holds
    ``queue_max_length``, ``queue_type`` and ``queue_policy_extra`` (rabbitmq_queue_max_length,
    broker_queue_type and rabbitmq_queue_policy_extra; 0, classic and none when left out),
    which decide the queues' length limits. Root's only (0600): it holds the password.

    Queue entries written by an older bundle lack ``level``, ``max_length``,
    ``max_drain_seconds`` and ``dead_max_length``: the check reads them as no level and no
    known limit, so no format bump."""
    kind = brokers.kind(broker["kind"])
    user, password = access.check_credentials(kind.name, broker)
    return {
        "format": BROKER_FORMAT,
        "kind": kind.name,
        **kind.check_access(broker),
        "user": user,
        "password": password,
        "queues": queues.checked_queues(
            groups,
            kind.name,
            broker.get("queue_max_length", 0),
            broker.get("queue_type", "classic"),
            broker.get("queue_policy_extra"),
        ),
    }


def worker_spec(group: dict, broker: dict, allow_root: bool = False) -> dict:
    """What brokerfleet-exec starts for every process of a planned ``group``: the command as an
    argument vector, the working directory and the environment.

    The role writes it as JSON, which carries every value exactly as the inventory wrote it:
    supervisord's own syntax cannot (it expands ``%``, strips `` #`` and `` ;`` comments and
    quotes, and cuts values at commas), so its files hold only names and paths the bundle
    chose. The command is split like supervisord would split it (a POSIX shell word list).
    """
    return {
        "format": WORKER_SPEC_FORMAT,
        "group": group["name"],
        "argv": shlex.split(group["command"]),
        "directory": group["directory"],
        "environment": sizing.worker_environment(group, broker),
        "allow_root": bool(allow_root),
    }


def worker_spec_digest(spec: dict) -> str:
    """A short digest of a worker spec: part of its file name, so a changed spec is a new file
    and the running workers keep theirs until supervisord switches them over."""
    return _digest(spec)[:16]


def _digest(data) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def worker_specs(plan, broker: dict, allow_root: bool = False) -> dict:
    """Per planned group, its worker spec and the file it is written to, ``<group>.<digest>.json``
    (the worker_fleet role's spec directory)."""
    specs = {}
    for group in plan:
        spec = worker_spec(group, broker, allow_root)
        specs[group["name"]] = {
            "spec": spec,
            "file": f"{group['name']}.{worker_spec_digest(spec)}.json",
        }
    return specs
