"""Unit and property tests for the load guard of roles/fleet_checks/files/brokerfleet-check."""

import importlib.util
from importlib.machinery import SourceFileLoader
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

CHECK = Path(__file__).resolve().parents[2] / "roles/fleet_checks/files/brokerfleet-check"
loader = SourceFileLoader("brokerfleet_check", str(CHECK))
check = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
loader.exec_module(check)

GROUPS = [
    {"name": "imports", "processes": 3, "min": 1, "importance": 4},
    {"name": "thumbnails", "processes": 2, "min": 1, "importance": 1},
    {"name": "billing", "processes": 2, "min": 0, "importance": 5},
]


def run(state, loads, groups=GROUPS, high=0.8, low=0.5, runs=2):
    actions = []
    for load in loads:
        state, action = check.guard_step(state, load, groups, high, low, runs)
        actions.append(action)
    return state, actions


def test_sheds_the_least_important_group_after_k_runs_above_the_threshold():
    state, actions = run({}, [0.9, 0.95])
    assert actions == [None, ("shed", "thumbnails")]
    assert state["shed"] == {"thumbnails": 1}


def test_never_below_min_and_never_importance_five():
    state, actions = run({}, [0.9] * 20)
    shed = [a for a in actions if a]
    # thumbnails 2 -> 1 (its min), then imports 3 -> 1; billing (importance 5) untouched.
    assert shed == [("shed", "thumbnails"), ("shed", "imports"), ("shed", "imports")]
    assert state["shed"] == {"thumbnails": 1, "imports": 2}


def test_gives_back_most_important_first_after_k_runs_below():
    state, _ = run({}, [0.9] * 6)
    state, actions = run(state, [0.3] * 6)
    assert [a for a in actions if a] == [
        ("restore", "imports"),
        ("restore", "imports"),
        ("restore", "thumbnails"),
    ]
    assert state["shed"] == {}


def test_holds_still_between_the_thresholds_and_when_load_is_unknown():
    state, actions = run({}, [0.9, 0.7, 0.9, None, 0.9, 0.6])
    assert actions == [None] * 6 and state["shed"] == {}


def test_shed_counts_follow_a_smaller_manifest():
    groups = [{**GROUPS[1], "processes": 1}]  # thumbnails re-rendered at its min
    state, _ = run({"shed": {"thumbnails": 1, "gone": 2}}, [0.6], groups=groups)
    assert state["shed"] == {}


def test_expected_processes_leave_out_the_highest_numbers():
    expected = check.expected_processes(GROUPS[:2], {"imports": 1})
    assert expected == {
        "imports-00": True,
        "imports-01": True,
        "imports-02": False,
        "thumbnails-00": True,
        "thumbnails-01": True,
    }


loads = st.lists(st.one_of(st.none(), st.floats(0, 3)), max_size=60)


@given(loads=loads, runs=st.integers(1, 4))
def test_bounds_hold_and_it_never_flaps(loads, runs):
    state, actions = run({}, loads, runs=runs)
    by_name = {g["name"]: g for g in GROUPS}
    for name, count in state.get("shed", {}).items():
        group = by_name[name]
        assert group["importance"] < 5 and 0 < count <= group["processes"] - group["min"]
    # Two actions are always at least `runs` runs apart.
    acted = [i for i, action in enumerate(actions) if action]
    assert all(b - a >= runs for a, b in zip(acted, acted[1:], strict=False))
