"""The Grafana dashboard (dashboards/brokerfleet.json): every panel's PromQL, and the metric
names each uses, so that tests can prove each name exists and each query returns data.

Plain Python with no Ansible import, like the rest of plugins/module_utils.
"""

from __future__ import annotations

import json
import re

# Relative to the repository root.
DASHBOARD = "dashboards/brokerfleet.json"
# The rabbitmq_prometheus families the panels read from /metrics/detailed, each asked for in
# the scrape's query string (README "Metrics"): any other family costs series per queue,
# channel or connection that no panel shows.
DETAILED_FAMILIES = ("queue_coarse_metrics", "queue_consumer_count")

# String literals, label matchers, range and subquery selectors, and the label lists of
# by/without/on/ignoring/group_left/group_right: none of them names a metric.
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# A number (with a duration unit, as offset takes) or a name; a name followed by "(" is a
# function or an aggregation.
_TOKENS = re.compile(
    r"(?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)"
    r"|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?P<call>\s*\()?"
)
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "atan2", "inf", "nan"}
)


def load(path: str = DASHBOARD) -> dict:
    """The dashboard as Grafana would import it."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def panels(dashboard: dict) -> list[dict]:
    """Every panel, those inside collapsed rows included, the rows themselves left out."""
    found = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def expressions(dashboard: dict) -> list[tuple[str, str, str]]:
    """(panel title, target refId, PromQL) of every query the dashboard runs."""
    return [
        (panel["title"], target["refId"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL ``expression`` selects (not its functions, keywords, labels
    or numbers)."""
    text = _STRINGS.sub('""', expression)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    return {
        match["name"]
        for match in _TOKENS.finditer(text)
        if match["name"] and not match["call"] and match["name"] not in _KEYWORDS
    }
