"""site.yml's tags pick capabilities, and the input checks run whatever the tags (README
"Tags"). Read from `ansible-playbook --list-tasks`, which runs nothing."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))

# A task each play runs only when its play is selected (the roles' own, or the play's).
MARKERS = {
    "preflight": "Check the settings of the cron checks\t",
    "prepare": "Write and check the worker files",
    "broker": "Set up the broker broker_kind names",
    "workers": "worker_fleet : Write the fleet manifest",
    "checks": "fleet_checks : Install brokerfleet-check",
    "summary": "Show the worker groups of this host",
}


def listed(*arguments):
    result = subprocess.run(
        [ANSIBLE_PLAYBOOK, "--list-tasks", *arguments, "site.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return {name for name, marker in MARKERS.items() if marker in result.stdout}


@pytest.mark.parametrize(
    ("tags", "plays"),
    [
        ("broker", {"preflight", "prepare", "broker"}),
        ("workers", {"preflight", "prepare", "workers", "summary"}),
        ("checks", {"preflight", "checks"}),
        ("summary", {"preflight", "summary"}),
    ],
)
def test_a_tag_runs_its_plays_and_always_the_input_checks(tags, plays):
    assert listed("--tags", tags) == plays


def test_without_tags_everything_runs():
    assert listed() == set(MARKERS)


def test_every_play_is_tagged():
    site = (ROOT / "site.yml").read_text()
    imports = re.findall(r"import_playbook: (\S+)\n  tags: \[([^\]]+)\]", site)
    assert len(imports) == site.count("import_playbook:") == len(MARKERS)
