"""`make bench`: how long converging takes, first time and again, on fresh podman test hosts.

Target (README "Benchmark"): a no-op re-run takes at most 0.3 x the first converge. Prints
one line per measure and exits 1 when a target is missed. Uses molecule/bench, whose hosts
are named bench-broker and bench-worker so that it never collides with a test run.
"""

import os
import subprocess
import sys
import time

SCENARIO = ["--scenario-name", "bench"]
NOOP_RATIO_TARGET = 0.3


def molecule(command, *ansible_args):
    """Seconds one molecule command took; ansible_args go to ansible-playbook."""
    argv = ["molecule", command, *SCENARIO, *(["--", *ansible_args] if ansible_args else [])]
    started = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def converge(*ansible_args):
    return molecule("converge", *ansible_args)


def main():
    os.environ.setdefault("ANSIBLE_NOCOLOR", "1")
    molecule("destroy")
    molecule("create")
    try:
        first = converge()
        noop = converge()
        scaled = converge("-e", "fleet_cpus=4")
    finally:
        molecule("destroy")
    ratio = noop / first
    print(f"first converge        {first:6.1f} s")
    target = f"target <= {NOOP_RATIO_TARGET}"
    print(f"no-op re-run          {noop:6.1f} s   ratio {ratio:.2f} ({target})")
    print(f"re-run to scale 2->4  {scaled:6.1f} s")
    if ratio > NOOP_RATIO_TARGET:
        print("MISSED: the no-op re-run is slower than the target")
        return 1
    print("target met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
