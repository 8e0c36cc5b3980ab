"""Training time per epoch: the ULD assistant against weight-level methods, on the same
target, data, batch size and machine (the ULD paper reports more than 3x less time per epoch
than NPO).

    python benchmarks/epoch_time.py [--methods npo,graddiff] [--steps 12]

Each trainer runs --steps steps of its real training (tofu-mini protocol of tofu_e2e.py:
forget10, retained authors tofu:full[:400], batch 8, bf16 autocast; the assistant with the
paper's settings, the methods with compare_methods.py's budget, LoRA r32 on every linear).
Time per epoch = the median step time (first step left out as warm-up) x the trainer's own
steps per epoch (the assistant's epoch also holds the paraphrase augmentation). The target
comes from tofu_e2e.py's cache (run it first) or --target.
"""
import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from compare_methods import BUDGET  # noqa: E402
from mini_workdir import default_workdir  # noqa: E402
from tofu_e2e import ASSISTANT, PROTOCOLS, flags, uld  # noqa: E402


def per_step(artifact: Path) -> tuple:
    """(median seconds per step after the first, steps per epoch, trainable parameters)."""
    walls = [h["wall_s"] for h in json.loads((artifact / "training_log.json").read_text())]
    result = json.loads((artifact / "uld.json").read_text())["result"]
    return statistics.median(b - a for a, b in zip(walls[:-1], walls[1:])), result["steps_per_epoch"], result["trainable_parameters"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="npo")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--target", type=Path, default=None)
    parser.add_argument("--no-record", action="store_true", help="print the table only")
    args = parser.parse_args()
    target = args.target or default_workdir() / "target"
    if not target.exists():
        sys.exit(f"error: no target at {target}; run benchmarks/tofu_e2e.py first or pass --target")
    data = ["--target", target, "--forget", "tofu:forget10", "--retain", PROTOCOLS["mini"]["assistant_retain"]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        uld("train-assistant", *data, "--out", work / "uld", *flags({**ASSISTANT, "max_steps": args.steps}))
        rows.append(("ULD assistant (K=8 of 30 layers)", *per_step(work / "uld")))
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            uld("unlearn", "--method", method, *data, "--out", work / method, *flags({**BUDGET, "max_steps": args.steps}))
            rows.append((method, *per_step(work / method)))
    uld_epoch = rows[0][1] * rows[0][2]
    lines = ["| trainer | s per step | steps per epoch | s per epoch | vs ULD | trainable params |", "|---|---|---|---|---|---|"]
    for label, step, steps, params in rows:
        lines.append(f"| {label} | {step:.2f} | {steps} | {step * steps:.0f} | {step * steps / uld_epoch:.2f}x | {params} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        from report import write_section

        write_section("epoch-time:mini", "Training time per epoch: ULD's assistant against weight-level methods",
                      f"python benchmarks/epoch_time.py --methods {args.methods} --steps {args.steps}", text)


if __name__ == "__main__":
    main()
