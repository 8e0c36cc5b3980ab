"""TOFU scoring with shared prompts against one forward per (question, answer) pair.

`uld eval tofu` scores 7 answers per forget/retain question (the answer, its paraphrase and
5 perturbed ones). Scoring them as continuations of one prompt forward skips ~40% of the
tokens. This script scores the first N questions of forget10_perturbed with the embedded
model both ways, in the same run, and checks that the per-pair losses agree.

    python benchmarks/scoring_speed.py [--questions 40] [--batch-sizes 8,16,32] [--record]
"""
import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from uld_serve.eval.scoring import score_pairs  # noqa: E402
from uld_serve.core.models import resolve_model  # noqa: E402
from uld_serve.reference import UldModel  # noqa: E402
from uld_serve.core.tofu import load_split  # noqa: E402


def tofu_pairs(questions: int) -> list:
    pairs = []
    for r in load_split("forget10_perturbed")[:questions]:
        for answer in [r["answer"], r["paraphrased_answer"], *r["perturbed_answer"]]:
            pairs.append((r["question"], answer))
    return pairs


def timed(model, pairs, batch_size, share_prompts):
    started = time.perf_counter()
    results = score_pairs(model, pairs, batch_size=batch_size, share_prompts=share_prompts)
    return time.perf_counter() - started, [r["avg_loss"] for r in results]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--batch-sizes", default="8,16,32", help="pairs per batch for the shared-prompt runs")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--record", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args()
    model = UldModel(resolve_model(args.model))
    pairs = tofu_pairs(args.questions)
    score_pairs(model, pairs[:14], batch_size=8)  # warm-up
    base_s, base_losses = timed(model, pairs, 8, share_prompts=False)
    lines = ["| scoring | pairs per batch | seconds | pairs/s | speed-up | max relative loss difference |",
             "|---|---|---|---|---|---|",
             f"| one forward per pair (before) | 8 | {base_s:.1f} | {len(pairs) / base_s:.2f} | 1.00x | |"]
    for batch_size in map(int, args.batch_sizes.split(",")):
        seconds, losses = timed(model, pairs, batch_size, share_prompts=True)
        diff = max(abs(a - b) / abs(b) for a, b in zip(losses, base_losses))
        lines.append(f"| shared prompts | {batch_size} | {seconds:.1f} | {len(pairs) / seconds:.2f} | "
                     f"{base_s / seconds:.2f}x | {diff:.1e} |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        from report import invocation, write_section

        write_section("scoring-speed", "TOFU scoring with shared prompts", invocation(),
                      f"{args.model}, fp32, {len(pairs)} pairs ({args.questions} forget10 questions x 7 answers), "
                      f"the reference model (transformers).\n\n{table}")


if __name__ == "__main__":
    main()
