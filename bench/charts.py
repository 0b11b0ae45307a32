"""The bench's charts (matplotlib, no display): bench/results/<date>.png from its results."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def p1_panel(axes, kind, rows):
    """Efficiency by prefetch, a line per job length; the bundle's prefetch as a big dot."""
    settings = [s for s in rows[0]["efficiency"] if s != "bundle"]
    for row in rows:
        values = [row["efficiency"][s] for s in settings]
        (line,) = axes.plot(settings, values, marker="o", label=f"~{row['mean_seconds']:g} s")
        bundle = str(row["bundle_prefetch"])
        if bundle in settings:
            x = settings.index(bundle)
        else:  # a prefetch between two fixed ones: place it between them
            x = (
                sum(1 for s in settings if s != "unbounded" and int(s) < row["bundle_prefetch"])
                - 0.5
            )
        axes.plot(
            [x],
            [row["efficiency"]["bundle"]],
            "o",
            markersize=11,
            color=line.get_color(),
            alpha=0.5,
        )
    axes.set_title(f"P1 drain efficiency on {kind} (big dot: the bundle's prefetch)")
    axes.set_xlabel("prefetch")
    axes.set_ylabel("ideal / measured")
    axes.set_ylim(top=1.02)
    axes.axhline(0.98, color="grey", linewidth=0.8, linestyle="--")
    axes.legend(title="job length", fontsize="small")


def p4_panel(axes, p4):
    """Queue depth (left axis) and the broker's memory with its watermark (right axis), from
    the first publish to the end of the drain; the publish and the drain shaded."""
    series = p4["series"]
    axes.plot(series["seconds"], series["depth"], color="tab:blue", label="queue depth")
    axes.axvspan(0, p4["publish"]["seconds"], color="tab:blue", alpha=0.08, label="publish")
    drain = p4["drain"]
    axes.axvspan(
        drain["from"],
        drain["from"] + drain["seconds"],
        color="tab:green",
        alpha=0.08,
        label="drain",
    )
    axes.set_xlabel("seconds since the first publish")
    axes.set_ylabel("messages ready and unacked")
    axes.set_ylim(bottom=0)
    memory = axes.twinx()
    mib = 2**20
    memory.plot(
        series["seconds"], [m / mib for m in series["mem_used"]], color="tab:red", label="memory"
    )
    memory.plot(
        series["seconds"],
        [m / mib for m in series["mem_limit"]],
        color="tab:red",
        linestyle="--",
        label="watermark",
    )
    memory.set_ylabel("broker memory, MiB")
    memory.set_ylim(bottom=0)
    handles = [h for ax in (axes, memory) for h in ax.get_legend_handles_labels()[0]]
    axes.legend(handles=handles, fontsize="small", loc="center right")
    axes.set_title(
        f"P4 queue depth and broker memory over time against the watermark "
        f"({p4['jobs']:,} jobs, RabbitMQ)"
    )


def p5_panel(axes, p5):
    for name, profile in p5["profiles"].items():
        workers = sorted(profile["rates"])
        rates = [profile["rates"][w] for w in workers]
        axes.plot(workers, rates, marker="o", label=name)
    axes.axvline(p5["choice"], color="grey", linestyle="--", label="sizing filter's choice")
    axes.set_title(f"P5 throughput by workers ({p5['cpus']} CPUs)")
    axes.set_xlabel("worker processes")
    axes.set_ylabel("jobs / s")
    axes.legend(fontsize="small")


def draw(results, path):
    panels = [("p1", kind, rows) for kind, rows in results.get("p1", {}).items()]
    if "p4" in results:
        panels.append(("p4", None, results["p4"]))
    if "p5" in results:
        panels.append(("p5", None, results["p5"]))
    if not panels:
        return
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 4.5 * len(panels)), squeeze=False)
    for ax, (part, kind, data) in zip(axes[:, 0], panels, strict=True):
        if part == "p1":
            p1_panel(ax, kind, data)
        elif part == "p4":
            p4_panel(ax, data)
        else:
            p5_panel(ax, data)
    figure.suptitle(f"brokerfleet bench {results['date']} ({results['machine']['cpus']} CPUs)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
