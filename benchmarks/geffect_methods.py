"""G-effect of every weight-level method on the tofu-mini target: `uld geffect` run on the real
model (SmolLM2 that learned 40 TOFU authors, forget10), the same short budget for each method,
one table and one plot in BENCHMARKS.md.

    python benchmarks/geffect_methods.py                   # every method (~5 min each here)
    python benchmarks/geffect_methods.py --methods ga,npo  # a subset (runs are cached)

Each method trains its LoRA (r 32 on every linear, lr 1e-4, batch 8) for STEPS steps on
forget10 with the protocol's retain data, and the G-effect (training/geffect.py) is measured
every EVERY steps on fixed probes of 16 forget10 and 16 retain answers. A negative forget
G-effect is unlearning, a negative retain G-effect is damage; when both are negative, their
ratio says how much retained knowledge a method gives up per unit of forgetting.
Needs the target of benchmarks/tofu_e2e.py (run it first, at least `--until finetune_target`).
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from compare_methods import METHODS, parse_methods  # noqa: E402
from mini_workdir import default_workdir  # noqa: E402
from tofu_e2e import PROTOCOLS, uld  # noqa: E402

STEPS, EVERY, LR, PROBE = 20, 5, 1e-4, 16
RESULTS = REPO / "benchmarks" / "results" / "geffect-mini"


def records_path(work: Path, method: str) -> Path:
    return work / "geffect" / method / "geffect.json"


def run(method: str, work: Path, target: Path) -> None:
    out = records_path(work, method).parent
    if not records_path(work, method).exists():
        uld("geffect", "--method", method, "--target", target, "--forget", "tofu:forget10",
            "--retain", PROTOCOLS["mini"]["assistant_retain"], "--out", out, "--max-steps", STEPS,
            "--every", EVERY, "--lr", LR, "--probe-size", PROBE, "--seed", 0)


def row(method: str, result: dict) -> str:
    records = result["records"]
    first, last = records[0], records[-1]
    forget = sum(r["forget_total"] for r in records) / len(records)
    retain = sum(r["retain_total"] for r in records) / len(records)
    top = max(last["forget"], key=lambda g: abs(last["forget"][g]))
    return (f"| {method} | {forget:.3g} | {retain:.3g} | {retain / forget:.3g} | {top} | "
            f"{first['forget_risk']:.3f} -> {last['forget_risk']:.3f} | {first['retain_risk']:.3f} -> {last['retain_risk']:.3f} |")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, which in zip(axes, ("forget", "retain")):
        for method, result in results.items():
            records = result["records"]
            ax.plot([r["step"] for r in records], [r[f"{which}_total"] for r in records], marker="o", label=method)
        ax.axhline(0.0, color="gray", linewidth=0.8)
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_xlabel("step")
        ax.set_title(f"{which} G-effect (negative on {which}: {'unlearning' if which == 'forget' else 'damage'})")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    methods = parse_methods(args.methods)
    work = args.workdir or default_workdir()
    target = work / "target"
    if not (target / "config.json").exists():
        sys.exit("error: run benchmarks/tofu_e2e.py first (it trains the tofu-mini target)")
    for method in methods:
        run(method, work, target)
    results = {m: json.loads(records_path(work, m).read_text()) for m in METHODS if records_path(work, m).exists()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    for method in results:
        shutil.copy(records_path(work, method), RESULTS / f"{method}.json")
    plot(results, RESULTS / "geffect_by_method.png")
    lines = [f"Each method {STEPS} steps from the target (LoRA r 32, lr {LR:g}, batch 8, seed 0), measured every {EVERY} "
             f"steps on {PROBE} forget10 and {PROBE} retain answers; G-effects are means over the measurements. "
             "Per-method records in `benchmarks/results/geffect-mini/`.", "",
             "| method | forget G-effect | retain G-effect | retain / forget | largest forget layer group | forget risk | retain risk |",
             "|---|---|---|---|---|---|---|"]
    lines += [row(m, r) for m, r in results.items()]
    lines += ["", "![G-effect by method](benchmarks/results/geffect-mini/geffect_by_method.png)"]
    text = "\n".join(lines)
    print(text)
    from report import write_section

    write_section("geffect:mini", "G-effect of the weight-level methods (tofu-mini)", "python benchmarks/geffect_methods.py", text)


if __name__ == "__main__":
    main()
