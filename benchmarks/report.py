"""Benchmark scripts write their own section of BENCHMARKS.md, between HTML-comment markers,
so a rerun replaces its section and leaves every other one alone."""
import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def cpu_description() -> str:
    """The CPU's model name and its widest vector unit: these machines vary (AMX machines ran
    bf16 7x faster than fp32, AVX2-only ones 11x slower; BENCHMARKS.md)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    unit = next((label for flag, label in (("amx_bf16", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), "no AVX2")
    return f"{name or 'unknown CPU'}, {unit}"


def invocation() -> str:
    """The command line that ran this benchmark, as a reader would retype it."""
    script = Path(sys.argv[0]).resolve()
    return " ".join(["python", f"benchmarks/{script.name}", *map(shlex.quote, sys.argv[1:])])


def write_section(key: str, heading: str, command: str, text: str) -> None:
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    machine = f"Run {datetime.date.today()} on {platform.machine()} ({cpu_description()}) with {os.cpu_count()} cores, `{command}`."
    body = "\n".join([begin, machine, "", text, end])
    current = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    if begin in current and end in current:
        current = current[: current.index(begin)] + body + current[current.index(end) + len(end):]
    else:
        current = current.rstrip() + f"\n\n## {heading}\n\n" + body + "\n"
    BENCHMARKS.write_text(current)


def utility_scatter(points: dict, path, title: str) -> None:
    """Forget quality (log) against model utility, one marker per model, labels in a legend
    beside the axes (ULD's labels are too long to annotate points with)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    colors = plt.get_cmap("tab20").colors
    floor = 1e-40
    at_floor = {}  # utility -> models already drawn there, so that coinciding ones stay visible
    for i, (label, s) in enumerate(points.items()):
        fq = s.get("forget_quality")
        fq = 1.0 if fq is None else fq  # None: the retain reference, the comparison itself
        color = "black" if label == "target" else colors[i % len(colors)]
        if fq < floor:  # below the axis: an open triangle on the floor, rings widening where they coincide
            spot = round(s["model_utility"], 3)
            n = at_floor.get(spot, 0)
            at_floor[spot] = n + 1
            ax.scatter(s["model_utility"], floor, s=50 * (1 + 1.5 * n), marker="v", facecolors="none",
                       edgecolors=color, linewidths=1.5, label=f"{label} (< {floor:.0e})")
            continue
        marker = "X" if label == "target" else "*" if label.startswith("ULD") else "o"
        ax.scatter(s["model_utility"], fq, s=90 if marker == "*" else 50, marker=marker, color=color, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("model utility")
    ax.set_ylabel("forget quality (KS p-value)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
