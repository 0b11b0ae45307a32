"""`make bench`: what the bundle is for, measured side by side on fresh podman test hosts.

    python bench/run.py [--parts p1,p2,p3,p4,p5] [--brokers rabbitmq,activemq] [--quick]

Each broker gets a fresh test host (Debian 12) that runs this checkout's site.yml on itself
with the default inventory, as `make deploy` does on a new machine (the connection is local, so
converge times are the bundle's own, not a `podman exec` per task). Its demo groups are then
paused, and bench/drain.py runs timed drains there with the reference worker:

- P1 drain efficiency (ideal ÷ measured) of 1,000 uneven jobs, per job length, at the bundle's
  prefetch and at fixed ones, on RabbitMQ and ActiveMQ;
- P2 the priority levels of the demo group `reports`: 750 jobs over 5 levels, and very_high
  jobs arriving behind a full low backlog;
- P3 first converge, no-op re-run and a re-run that scales one group (RabbitMQ host);
- P4 a day's backlog on RabbitMQ: 100,000 persistent jobs published with confirms before any
  worker starts, then drained by 16 workers, the broker's memory sampled throughout;
- P5 throughput by worker count for a CPU-bound and an I/O-bound job, with the sizing
  filter's choice marked.

It writes bench/results/<date>.json (every figure, the machine and the commit; a second run
the same day adds its parts and brokers to it) and <date>.png (bench/charts.py), prints a
table with each target, and exits 1 when one is missed.
The arithmetic and targets are in bench/figures.py.
"""

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import charts  # noqa: E402
import figures  # noqa: E402
import yaml  # noqa: E402

from brokerfleet import sizing  # noqa: E402

IMAGE = "localhost/brokerfleet-test-host:bookworm"
DEMO_GROUPS = ("imports", "thumbnails", "reports")

# P1: job lengths (mean seconds), jobs per drain, workers, and the fixed prefetch settings the
# bundle's is compared with ("unbounded": no limit on RabbitMQ; ActiveMQ's STOMP has no
# "none", so as many as a drain holds).
P1_LENGTHS = (0.01, 0.05, 0.3, 2.0)
P1_JOBS = 1000
P1_WORKERS = 16
P1_FIXED = (1, 2, 4, 16, 100, "unbounded")
UNBOUNDED = {"rabbitmq": 0, "activemq": 32767}
# P2: the demo group with priority levels, its workers, and its jobs' mean length.
P2_GROUP, P2_WORKERS, P2_SECONDS = "reports", 4, 0.25
# P4: a day's backlog (RabbitMQ only): its jobs, their mean length (uneven, 0.6-5.4 ms), the
# workers that drain it, and how long the drain may take once the jobs are published.
P4_JOBS, P4_SECONDS, P4_WORKERS, P4_TIMEOUT = 100_000, 0.003, 16, 300
# P5: jobs of each profile {"seconds", "cpu_seconds"} and how many a drain takes.
P5_PROFILES = {
    "cpu-bound": ({"seconds": 0.05, "cpu_seconds": 0.05}, 800),
    "io-bound": ({"seconds": 0.1, "cpu_seconds": 0.01}, 1600),
}


def podman(*args, check=True, **kwargs):
    environment = {**os.environ, "CONTAINERS_CONF": os.path.join(ROOT, "molecule/containers.conf")}
    return subprocess.run(["podman", *args], check=check, env=environment, **kwargs)


class BenchHost:
    """A fresh podman test host with this checkout (and its .venv) mounted read-only at the
    same path, removed on exit."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        mounts = [ROOT]
        if not sys.base_prefix.startswith("/usr"):  # the venv's base Python, unless Debian's
            mounts.append(sys.base_prefix)
        volumes = [option for path in mounts for option in ("--volume", f"{path}:{path}:ro")]
        podman("rm", "--force", "--ignore", self.name, stdout=subprocess.DEVNULL)
        podman("run", "--detach", "--name", self.name, *volumes, IMAGE, stdout=subprocess.DEVNULL)
        return self

    def __exit__(self, *_):
        podman("rm", "--force", "--time", "0", self.name, stdout=subprocess.DEVNULL)

    def run(self, *argv, stdin=None, check=True):
        result = podman(
            "exec", "-i", "-w", ROOT, "-e", "ANSIBLE_NOCOLOR=1", self.name, *argv,
            input=stdin, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if check and result.returncode:
            sys.exit(f"{' '.join(argv)} failed on {self.name}:\n{result.stdout}{result.stderr}")
        return result.stdout

    def converge(self, *extra_vars):
        """Seconds one `ansible-playbook site.yml` took, and how many tasks changed."""
        argv = [".venv/bin/ansible-playbook", "site.yml", "-e", "broker_password=bench-only"]
        for assignment in extra_vars:
            argv += ["-e", assignment]
        started = time.monotonic()
        out = self.run(*argv)
        changed = sum(int(n) for n in re.findall(r"changed=(\d+)", out))
        return {"seconds": time.monotonic() - started, "changed": changed}

    def pids(self):
        """{supervisord program: pid} of the running workers."""
        out = self.run("supervisorctl", "status", check=False)
        return dict(re.findall(r"^(\S+)\s+RUNNING\s+pid (\d+)", out, re.MULTILINE))

    def drain(self, group, workers, jobs, prefetch=None, backlog=False, timeout=None):
        argv = ["python3", f"{ROOT}/bench/drain.py", "--group", group, "--workers", str(workers)]
        if prefetch is not None:
            argv += ["--prefetch", str(prefetch)]
        if backlog:
            argv.append("--backlog")
        if timeout is not None:
            argv += ["--timeout", str(timeout)]
        result = json.loads(self.run(*argv, stdin=json.dumps(jobs)))
        result["published"] = {int(k): v for k, v in result["published"].items()}
        if result["strays"]:
            # Not this drain's: an earlier one counted them done once already.
            ids = sorted({row[0] for row in result["strays"]})
            print(f"  {len(ids)} jobs of an earlier drain were done again in this one: {ids[:10]}")
        return result


def p3(host):
    """First converge, a no-op re-run, then fleet_cpus=3: the budget's two more workers all go
    to `imports` (weight 3), so every other process must keep running untouched."""
    first = host.converge()
    noop = host.converge()
    before = host.pids()
    scaled = host.converge("fleet_cpus=3")
    after = host.pids()
    kept = set(before) & set(after)
    return {
        "first": first,
        "noop": noop,
        "noop_ratio": noop["seconds"] / first["seconds"],
        "scale": scaled,
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "restarted": sorted(p for p in kept if before[p] != after[p]),
    }


def numbered(jobs):
    return [{"id": n, **job} for n, job in enumerate(jobs, 1)]


def p1(host, kind, lengths, count):
    # A drain nobody times first: a broker that just started, ActiveMQ's JVM above all, takes
    # its first messages slower (the first ActiveMQ drain of 2026-11-25, 10 ms jobs at
    # prefetch 10, measured 0.30, and prefetch 1 to 100 measured 0.42-0.54 after it).
    host.drain("thumbnails", P1_WORKERS, numbered([{"seconds": 0.01}] * count))
    rows = []
    for mean in lengths:
        seconds = figures.uneven_lengths(count, mean)
        jobs = numbered({"seconds": s} for s in seconds)
        bundle = sizing.prefetch_for(mean)
        efficiencies, tallies = {}, {}
        for setting in ("bundle", *P1_FIXED):
            prefetch = {"bundle": bundle, "unbounded": UNBOUNDED[kind]}.get(setting, setting)
            result = host.drain("thumbnails", P1_WORKERS, jobs, prefetch)
            efficiencies[str(setting)] = figures.efficiency(seconds, P1_WORKERS, result["done"])
            tallies[str(setting)] = {
                **figures.tally([j["id"] for j in jobs], result["done"]),
                "strays": len(result["strays"]),  # an earlier drain's jobs done in this one
            }
            print(f"  P1 {kind} {mean:g} s prefetch {setting}: {efficiencies[str(setting)]:.3f}")
        rows.append(
            {
                "mean_seconds": mean,
                "bundle_prefetch": bundle,
                "efficiency": efficiencies,
                "tally": tallies,
                **figures.p1_verdict(efficiencies),
            }
        )
    return rows


def p2(host, count):
    levels = ("very_high", "high", "medium", "low", "very_low")
    seconds = figures.uneven_lengths(count, P2_SECONDS, seed=2)
    jobs = numbered({"seconds": s, "level": levels[n % 5]} for n, s in enumerate(seconds))
    mixed = host.drain(P2_GROUP, P2_WORKERS, jobs)
    waited = figures.waits_by_level(jobs, mixed["published"], mixed["done"])
    tallied = figures.tally([j["id"] for j in jobs], mixed["done"])
    # very_high jobs, one every 2 s, behind a backlog of low ones that outlasts them.
    backlog = figures.uneven_lengths(count // 2, P2_SECONDS, seed=3)
    urgent = [{"seconds": P2_SECONDS, "level": "very_high", "at": 2 * n} for n in range(1, 11)]
    behind = numbered([*({"seconds": s, "level": "low"} for s in backlog), *urgent])
    late = host.drain(P2_GROUP, P2_WORKERS, behind)
    late_waits = figures.waits_by_level(behind, late["published"], late["done"])["very_high"]
    return {
        "jobs": count,
        "workers": P2_WORKERS,
        "mean_seconds": P2_SECONDS,
        "tally": tallied,
        "efficiency": figures.efficiency(seconds, P2_WORKERS, mixed["done"]),
        "median_wait": {level: statistics.median(w) for level, w in waited.items()},
        "urgent_waits": late_waits,
        **figures.p2_verdict(tallied, late_waits, P2_SECONDS),
    }


def p4(host, count):
    """A day's backlog: publish rate, drain rate, and the broker's memory against its
    watermark over both."""
    seconds = figures.uneven_lengths(count, P4_SECONDS, seed=4)
    jobs = numbered({"seconds": s} for s in seconds)
    prefetch = sizing.prefetch_for(P4_SECONDS)
    result = host.drain("thumbnails", P4_WORKERS, jobs, prefetch, backlog=True, timeout=P4_TIMEOUT)
    backlog, done, samples = result["backlog"], result["done"], result["samples"]
    tallied = figures.tally([j["id"] for j in jobs], done)
    rate = figures.publish_rate(backlog)
    memory = figures.memory_peak(samples)
    start = backlog["first"]
    p = {
        "jobs": count,
        "workers": P4_WORKERS,
        "mean_seconds": P4_SECONDS,
        "prefetch": prefetch,
        "publish": {**backlog, "seconds": backlog["last"] - start, "rate": rate},
        "drain": {
            "from": min(row[2] for row in done) - start,  # seconds after the first publish
            "seconds": figures.drain_seconds(done),
            "rate": figures.throughput(done),
        },
        "tally": tallied,
        "strays": len(result["strays"]),
        "memory": memory,
        "sample_failures": result["sample_failures"],
        "series": figures.p4_series(samples, start),
        **figures.p4_verdict(backlog, rate, memory, tallied),
    }
    print(f"  P4 published at {rate:.0f}/s, drained at {p['drain']['rate']:.0f} jobs/s")
    return p


def sizing_choice(cpus, memory_mb):
    """The worker count the sizing filter gives one group on this host, from the inventory
    defaults (roles/fleet_contract/defaults/main.yml)."""
    with open(os.path.join(ROOT, "roles/fleet_contract/defaults/main.yml"), encoding="utf-8") as f:
        defaults = yaml.safe_load(f)
    return sizing.worker_budget(
        cpus, defaults["workers_per_cpu"], memory_mb, defaults["worker_memory_mb"]
    )


def p5(host, scale):
    cpus = int(host.run("nproc"))
    memory_mb = int(re.search(r"MemTotal:\s+(\d+)", host.run("cat", "/proc/meminfo"))[1]) // 1024
    choice = sizing_choice(cpus, memory_mb)
    profiles = {}
    for name, (job, count) in P5_PROFILES.items():
        jobs = numbered([job] * max(1, int(count * scale)))
        prefetch = sizing.prefetch_for(job["seconds"])
        rates = {}
        for workers in (cpus, 2 * cpus, 3 * cpus, 4 * cpus):
            rates[workers] = figures.throughput(
                host.drain("thumbnails", workers, jobs, prefetch)["done"]
            )
            print(f"  P5 {name} {workers} workers: {rates[workers]:.1f} jobs/s")
        profiles[name] = {
            "job": job,
            "prefetch": prefetch,
            "rates": rates,
            **figures.p5_verdict(rates, choice),
        }
    return {"cpus": cpus, "choice": choice, "profiles": profiles}


def machine():
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        model = re.search(r"model name\s*:\s*(.*)", cpuinfo.read())
    with open("/proc/meminfo", encoding="utf-8") as meminfo:
        memory_kb = int(re.search(r"MemTotal:\s+(\d+)", meminfo.read())[1])
    commit = subprocess.run(
        ["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": model[1] if model else platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_kb / 2**20, 1),
        "kernel": platform.release(),
        "os": platform.freedesktop_os_release().get("PRETTY_NAME", ""),
        "commit": commit,
    }


def table(results):
    """The printed table: one line per figure, its target, and whether it was met."""
    lines = []

    def line(name, value, target, met):
        lines.append(f"{name:<34} {value:<34} {target:<30} {'met' if met else 'MISSED'}")

    for kind, rows in results.get("p1", {}).items():
        for row in rows:
            line(
                f"P1 {kind} jobs ~{row['mean_seconds'] * 1000:g} ms",
                f"{row['bundle_efficiency']:.3f} at {row['bundle_prefetch']}; best "
                f"{row['best']} {row['best_efficiency']:.3f}",
                "within 2 % of best" + (" (none >= 0.98)" if row["out_of_reach"] else ", >= 0.98"),
                row["met"],
            )
    if "p2" in results:
        p = results["p2"]
        line(
            "P2 completed, efficiency",
            f"{p['tally']['completed']}/{p['jobs']}, {p['efficiency']:.3f}",
            "all",
            p["tally"]["lost"] == 0,
        )
        line(
            "P2 very_high wait behind low",
            f"{p['longest_urgent_wait']:.2f} s = {p['urgent_wait_jobs']:.1f} jobs",
            f"<= {figures.P2_URGENT_WAIT_JOBS} job lengths",
            p["met"],
        )
    if "p3" in results:
        p = results["p3"]
        line("P3 first converge", f"{p['first']['seconds']:.1f} s", "", True)
        line(
            "P3 no-op re-run",
            f"{p['noop']['seconds']:.1f} s = {p['noop_ratio']:.2f} x, "
            f"{p['noop']['changed']} changed",
            f"<= {figures.P3_NOOP_RATIO_TARGET} x, 0 changed",
            p["noop_ratio"] <= figures.P3_NOOP_RATIO_TARGET and not p["noop"]["changed"],
        )
        line(
            "P3 scale re-run (fleet_cpus=3)",
            f"{p['scale']['seconds']:.1f} s, +{len(p['added'])} -{len(p['removed'])}, "
            f"{len(p['restarted'])} restarted",
            "0 restarted",
            not p["restarted"],
        )
    if "p4" in results:
        p = results["p4"]
        line(
            f"P4 publish {p['jobs']:,} confirmed",
            f"{p['publish']['rate']:,.0f} msg/s ({p['publish']['seconds']:.1f} s)",
            f">= {figures.P4_PUBLISH_TARGET:,} msg/s",
            p["publish_met"],
        )
        line(
            f"P4 drain by {p['workers']} workers",
            f"{p['drain']['rate']:,.0f} jobs/s ({p['drain']['seconds']:.1f} s)",
            "",
            True,
        )
        refused = p["publish"]["nacked"] + p["publish"]["returned"]
        line(
            "P4 nothing lost",
            f"{p['tally']['completed']}/{p['jobs']}, {p['tally']['duplicates']} twice, "
            f"{refused} refused",
            "all, once; none nacked/returned",
            p["complete_met"],
        )
        memory = p["memory"]
        line(
            "P4 broker memory",
            f"max {memory['max_used'] / 2**20:,.0f} of {memory['watermark'] / 2**20:,.0f} MiB "
            f"({memory['max_used'] / memory['watermark']:.0%})"
            if memory["samples"]
            else "not sampled",
            "under the watermark, no alarm",
            p["memory_met"],
        )
    if "p5" in results:
        for name, p in results["p5"]["profiles"].items():
            line(
                f"P5 {name} workers",
                f"choice {p['choice']}: {p['ratio']:.2f} of best ({p['best']})",
                f">= {figures.P5_CHOICE_TARGET} of best",
                p["met"],
            )
    return lines


def missed(results):
    return [line for line in table(results) if line.endswith("MISSED")]


def merged(path, results):
    """The day's results so far, from a run of other parts or brokers earlier that day, with
    this run's on top: `--brokers activemq --parts p1` adds to them rather than replacing them.
    """
    if not os.path.exists(path):
        return results
    with open(path, encoding="utf-8") as saved:
        earlier = json.load(saved)
    for profile in earlier.get("p5", {}).get("profiles", {}).values():
        profile["rates"] = {int(workers): rate for workers, rate in profile["rates"].items()}
    return {**earlier, **results, "p1": {**earlier.get("p1", {}), **results["p1"]}}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="p1,p2,p3,p4,p5")
    parser.add_argument("--brokers", default="rabbitmq,activemq")
    parser.add_argument("--quick", action="store_true", help="a tenth of the jobs, to try it")
    args = parser.parse_args(argv)
    parts, scale = args.parts.split(","), 0.1 if args.quick else 1
    results = {"date": datetime.date.today().isoformat(), "machine": machine(), "p1": {}}
    for kind in args.brokers.split(","):
        with BenchHost(f"brokerfleet-bench-{kind}") as host:
            print(f"{kind}: converging a fresh host")
            if kind == "rabbitmq" and "p3" in parts:
                results["p3"] = p3(host)
            else:
                host.converge(f"broker_kind={kind}")
            for group in DEMO_GROUPS:
                host.run("brokerfleet-check", "pause", group)
            if "p1" in parts:
                results["p1"][kind] = p1(host, kind, P1_LENGTHS, int(P1_JOBS * scale))
            if kind == "rabbitmq" and "p2" in parts:
                results["p2"] = p2(host, int(750 * scale))
            if kind == "rabbitmq" and "p4" in parts:
                results["p4"] = p4(host, int(P4_JOBS * scale))
            if kind == "rabbitmq" and "p5" in parts:
                results["p5"] = p5(host, scale)
    directory = os.path.join(ROOT, "bench", "results")
    os.makedirs(directory, exist_ok=True)
    stem = os.path.join(directory, results["date"])
    results = merged(f"{stem}.json", results)
    with open(f"{stem}.json", "w", encoding="utf-8") as out:
        json.dump(results, out, indent=1)
    charts.draw(results, f"{stem}.png")
    print("\n".join(table(results)))
    print(f"wrote {stem}.json and {stem}.png")
    return 1 if missed(results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
