"""`make bench`: how long `ansible-playbook site.yml` takes, first time and again, on a fresh host.

The host is a fresh podman test host (Debian 12) that runs this checkout's playbook on itself
with the default inventory, exactly as `make deploy` does on a new machine: the connection is
local, so the timings are the bundle's own rather than the cost of a `podman exec` per task
(about 1.3 s each, which dominates any converge driven through the podman connection).

Target (README "Benchmark"): a re-run that changes nothing takes at most 0.3 x the first
converge, and reports changed=0. Prints one line per measure; exits 1 when a target is missed.
"""

import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "brokerfleet-bench"
IMAGE = "localhost/brokerfleet-test-host:bookworm"
NOOP_RATIO_TARGET = 0.3


def podman(*args, **kwargs):
    environment = {**os.environ, "CONTAINERS_CONF": os.path.join(ROOT, "molecule/containers.conf")}
    return subprocess.run(["podman", *args], check=True, env=environment, **kwargs)


def converge(*extra_vars):
    """Seconds one `ansible-playbook site.yml` took on the host, and how many tasks changed."""
    argv = [".venv/bin/ansible-playbook", "site.yml", "-e", "broker_password=bench-only"]
    for assignment in extra_vars:
        argv += ["-e", assignment]
    started = time.monotonic()
    result = podman(
        "exec", "-w", ROOT, "-e", "ANSIBLE_NOCOLOR=1", HOST, *argv,
        capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.monotonic() - started
    changed = sum(int(n) for n in re.findall(r"changed=(\d+)", result.stdout))
    return seconds, changed


def read_only_mounts():
    """The checkout (with its .venv) at the same path, and the venv's base Python unless it is
    Debian's own, which the host image has too."""
    mounts = [ROOT]
    if not sys.base_prefix.startswith("/usr"):
        mounts.append(sys.base_prefix)
    return [option for path in mounts for option in ("--volume", f"{path}:{path}:ro")]


def main():
    podman("rm", "--force", "--ignore", HOST, stdout=subprocess.DEVNULL)
    podman("run", "--detach", "--name", HOST, *read_only_mounts(), IMAGE, stdout=subprocess.DEVNULL)
    try:
        first, _ = converge()
        noop, noop_changed = converge()
        scaled, _ = converge("fleet_cpus=4")
    finally:
        podman("rm", "--force", HOST, stdout=subprocess.DEVNULL)
    ratio = noop / first
    print(f"first converge        {first:6.1f} s")
    target = f"target <= {NOOP_RATIO_TARGET}"
    print(f"no-op re-run          {noop:6.1f} s   ratio {ratio:.2f} ({target})")
    print(f"no-op re-run changed  {noop_changed:6d} tasks (target 0)")
    print(f"re-run at fleet_cpus=4 {scaled:6.1f} s")
    missed = []
    if ratio > NOOP_RATIO_TARGET:
        missed.append("the no-op re-run is slower than the target")
    if noop_changed:
        missed.append("the no-op re-run changed something")
    for reason in missed:
        print(f"MISSED: {reason}")
    if not missed:
        print("targets met")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
