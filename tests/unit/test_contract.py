"""The worker-group contract is written once (GROUP_DEFAULTS in plugins/module_utils/inputs.py);
the argument spec and the role README repeat it for readers, and must agree with it."""

import re
from pathlib import Path

import yaml

from brokerfleet import inputs

ROLE = Path(__file__).resolve().parents[2] / "roles" / "fleet_contract"


def group_options():
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    return specs["argument_specs"]["main"]["options"]["worker_groups"]["options"]


def readme_defaults():
    """{key: default column} of the README's worker-group table."""
    text = (ROLE / "README.md").read_text()
    table = text[text.index("### Worker-group keys") :]
    return dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", table, re.MULTILINE))


def test_the_argument_spec_lists_every_group_key_with_the_code_default():
    options = group_options()
    assert set(options) == set(inputs.GROUP_KEYS)
    for key, default in inputs.GROUP_DEFAULTS.items():
        assert options[key].get("default") == default, key


def test_the_readme_table_lists_every_group_key_with_the_code_default():
    documented = readme_defaults()
    assert set(documented) == set(inputs.GROUP_KEYS)
    for key, default in inputs.GROUP_DEFAULTS.items():
        if default is None:
            assert documented[key].startswith("none"), key
        else:
            shown = "{}" if default == {} else str(default)
            assert documented[key] == f"`{shown}`", key
    assert documented["name"] == documented["command"] == "required"
