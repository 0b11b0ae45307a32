"""The bench's arithmetic and targets: plain Python, unit-tested (tests/unit/test_bench.py).

A drain (bench/drain.py) comes back as ``published`` {job id: unix time} and ``done``
[[id, queue, started, finished], ...]. Every figure here is computed from those two and the
jobs that were sent, so the same numbers come out of a saved results file.
"""

import random

# "Uneven" jobs: uniform between these fractions of their mean length (0.2-1.8 x).
SPREAD = (0.2, 1.8)

# Targets (README "Performance"; issue 14).
P1_IDEAL_TARGET = 0.98  # the bundle's prefetch drains at >= 0.98 of the ideal ...
P1_BEST_TARGET = 0.98  # ... and at >= 0.98 of the best fixed prefetch's efficiency
P2_URGENT_WAIT_JOBS = 2  # very_high waits at most 2 job lengths behind a full low backlog
P3_NOOP_RATIO_TARGET = 0.15  # a no-op re-run takes at most 0.15 x the first converge
P4_PUBLISH_TARGET = 5000  # a day's backlog goes in at >= 5,000 confirmed messages/s, one node
P5_CHOICE_TARGET = 0.9  # the sizing filter's worker count gives >= 0.9 x the best throughput


def uneven_lengths(count, mean, seed=0):
    """``count`` job lengths of mean about ``mean``, the same for the same seed."""
    rand = random.Random(seed)
    low, high = SPREAD
    return [round(rand.uniform(low * mean, high * mean), 4) for _ in range(count)]


def ideal_seconds(lengths, workers):
    """The shortest possible drain: all work spread evenly, or the longest job alone."""
    return max(sum(lengths) / workers, max(lengths))


def drain_seconds(done):
    """From the first job's start to the last one's end."""
    return max(row[3] for row in done) - min(row[2] for row in done)


def efficiency(lengths, workers, done):
    """Ideal ÷ measured drain time: 1.0 when no worker ever waited for a message."""
    return ideal_seconds(lengths, workers) / drain_seconds(done)


def tally(ids, done):
    """Published, completed, lost and duplicated jobs."""
    finished = [row[0] for row in done]
    completed = set(finished) & set(ids)
    return {
        "published": len(ids),
        "completed": len(completed),
        "lost": len(set(ids) - completed),
        "duplicates": len(finished) - len(set(finished)),
    }


def waits(published, done):
    """Seconds each job waited between its publish and its (first) start."""
    started = {}
    for job_id, _queue, start, _finish in done:
        started[job_id] = min(start, started.get(job_id, start))
    return {job_id: started[job_id] - published[job_id] for job_id in started}


def waits_by_level(jobs, published, done):
    """{level: [waits]} of the jobs of each level."""
    waited = waits(published, done)
    levels = {}
    for job in jobs:
        levels.setdefault(job["level"], []).append(waited[job["id"]])
    return levels


def throughput(done):
    """Jobs done per second of the drain."""
    return len({row[0] for row in done}) / drain_seconds(done)


def p1_verdict(efficiencies, bundle="bundle"):
    """One job length's figures {setting: efficiency} → the best fixed setting, its
    efficiency, the bundle's, and whether the bundle met its targets. Where even the best fixed
    prefetch stays under P1_IDEAL_TARGET ("out_of_reach"), something else bounds the drain: the
    round trip (client and broker cost per message) on short jobs, the last uneven jobs on
    long ones. Only the comparison with the best applies there.
    """
    fixed = {setting: value for setting, value in efficiencies.items() if setting != bundle}
    best = max(fixed, key=fixed.get)
    ours = efficiencies[bundle]
    out_of_reach = fixed[best] < P1_IDEAL_TARGET
    met = ours >= P1_BEST_TARGET * fixed[best] and (out_of_reach or ours >= P1_IDEAL_TARGET)
    return {
        "best": best,
        "best_efficiency": fixed[best],
        "bundle_efficiency": ours,
        "out_of_reach": out_of_reach,
        "met": met,
    }


def p2_verdict(tallied, urgent_waits, mean_seconds):
    """Every job done, and very_high never waited more than P2_URGENT_WAIT_JOBS job lengths."""
    longest = max(urgent_waits)
    return {
        "longest_urgent_wait": longest,
        "urgent_wait_jobs": longest / mean_seconds,
        "met": tallied["lost"] == 0 and longest <= P2_URGENT_WAIT_JOBS * mean_seconds,
    }


def publish_rate(backlog):
    """Messages a queue took (acked, not returned) per second, from the first publish to the
    last confirm. ``backlog`` is what bench/drain.py --backlog reports of its publish."""
    return (backlog["acked"] - backlog["returned"]) / (backlog["last"] - backlog["first"])


def memory_peak(samples):
    """The most memory the broker was seen using, the watermark (its lowest mem_limit seen),
    and whether it stayed under it, with no memory alarm, at every sample. No sample: not
    under (unknown)."""
    if not samples:
        return {"max_used": None, "watermark": None, "alarm": None, "under": False, "samples": 0}
    return {
        "max_used": max(s["mem_used"] for s in samples),
        "watermark": min(s["mem_limit"] for s in samples),
        "alarm": any(s["mem_alarm"] for s in samples),
        "under": all(s["mem_used"] < s["mem_limit"] and not s["mem_alarm"] for s in samples),
        "samples": len(samples),
    }


def p4_series(samples, start):
    """The samples for a chart: seconds since ``start`` (the first publish), queue depth,
    memory used and the watermark."""
    return {
        "seconds": [round(s["time"] - start, 2) for s in samples],
        "depth": [s["depth"] for s in samples],
        "mem_used": [s["mem_used"] for s in samples],
        "mem_limit": [s["mem_limit"] for s in samples],
    }


def p4_verdict(backlog, rate, memory, tallied):
    """A day's backlog: published at >= P4_PUBLISH_TARGET messages/s, none refused (nacked or
    returned); the broker's memory under the watermark at every sample; every job done, and
    none twice."""
    published = rate >= P4_PUBLISH_TARGET
    refused = backlog["nacked"] + backlog["returned"]
    complete = refused == 0 and tallied["lost"] == 0 and tallied["duplicates"] == 0
    return {
        "publish_met": published,
        "memory_met": memory["under"],
        "complete_met": complete,
        "met": published and memory["under"] and complete,
    }


def p5_verdict(rates, choice):
    """{workers: jobs/s} and the sizing filter's worker count → the best count, and whether
    the choice reaches P5_CHOICE_TARGET of its throughput."""
    best = max(rates, key=rates.get)
    ratio = rates[choice] / rates[best]
    return {"best": best, "choice": choice, "ratio": ratio, "met": ratio >= P5_CHOICE_TARGET}
