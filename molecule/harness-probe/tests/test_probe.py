"""THROWAWAY harness probe: pytest --hosts=podman://broker,podman://worker molecule/harness-probe/tests"""

import os
import subprocess
from pathlib import Path

import pytest


def test_supervisord_running(host):
    assert host.process.filter(comm="supervisord")
    assert host.run("service supervisor status").rc == 0


def test_pid1_is_tini(host):
    assert host.file("/proc/1/comm").content_string.strip() == "tini"


def test_worker_resolves_broker(host):
    if host.backend.get_hostname() != "worker":
        pytest.skip("worker only")
    out = host.check_output("getent hosts broker")
    assert out.split()[1].split(".")[0] == "broker"


@pytest.mark.skipif("MOLECULE_INVENTORY_FILE" not in os.environ, reason="needs molecule's env")
def test_rerun_converge_with_other_vars(host):
    if host.backend.get_hostname() != "broker":
        pytest.skip("run once")
    scenario = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
    # molecule passes the inventory *directory* (ansible_inventory.yml + host_vars/group_vars)
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    proc = subprocess.run(
        ["ansible-playbook", "-i", str(inventory), str(scenario / "converge.yml"),
         "-e", "fleet_cpus=8"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fleet_cpus=8" in proc.stdout
    assert "changed=0" in proc.stdout
