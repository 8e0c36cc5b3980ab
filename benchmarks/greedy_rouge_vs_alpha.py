"""Diagnostic, not a selection: ROUGE-L recall of greedy answers (vLLM engine, serve filter)
against alpha, for one forget set of the tofu-mini workdir, on the first N questions of world
facts, real authors and the retain split. The probability metrics cannot show where served
text breaks; this does. Reading an alpha off it would choose on the test splits.

    python benchmarks/greedy_rouge_vs_alpha.py --forget-set 'tuned at K=15' --alphas 0,0.475,0.803
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mini_workdir import FORGET_SETS, default_workdir  # noqa: E402

SPLITS = ("world_facts", "real_authors", "retain_perturbed")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--forget-set", default="tuned at K=15", choices=sorted(FORGET_SETS))
    parser.add_argument("--alphas", default="0,0.475,0.6,0.7,0.75,0.803")
    parser.add_argument("--limit", type=int, default=100, help="first N questions of each split")
    args = parser.parse_args()
    from uld_serve.api import open_backend
    from uld_serve.eval.metrics import mean_rouge_l_recall
    from uld_serve.eval.scoring import greedy_answers
    from uld_serve.core.tofu import load_split

    work = args.workdir or default_workdir()
    alphas = [float(a) for a in args.alphas.split(",")]
    engine = open_backend(work / "target", {"f": work / FORGET_SETS[args.forget_set]}, "vllm", "fp32")
    table = {}
    try:
        for split in SPLITS:
            rows = load_split(split)[: args.limit]
            for alpha in alphas:
                answers = greedy_answers(engine, [r["question"] for r in rows], "f", alpha, max_new_tokens=200)
                table.setdefault(split, {})[alpha] = mean_rouge_l_recall([r["answer"] for r in rows], answers)
    finally:
        engine.close()
    print("| split | " + " | ".join(f"alpha {a:g}" for a in alphas) + " |")
    print("|---|" + "---|" * len(alphas))
    for split, by_alpha in table.items():
        print(f"| {split} | " + " | ".join(f"{by_alpha[a]:.3f}" for a in alphas) + " |")
    print(json.dumps(table))


if __name__ == "__main__":
    main()
