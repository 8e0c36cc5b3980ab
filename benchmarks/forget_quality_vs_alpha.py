"""Diagnostic, not a selection: forget quality of target + ULD assistant at every alpha.

    python benchmarks/forget_quality_vs_alpha.py     # after tofu_e2e.py and tune_assistant.py

The reported ULD rows use the alpha chosen on the validation split (tune_assistant.py). This
script asks a different question: could *any* alpha have reached the tofu-mini aim (forget
quality >= 0.5) with these assistants? It scores forget10's paraphrased and perturbed
answers once per model (alpha costs no extra forward), computes the truth ratios at each
alpha and scoring variant, and tests them against the retain reference's. The retain split's
answer probability is printed beside them as a utility hint. An "oracle" alpha read off this
table is chosen on the test metric and must not be reported as a result.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from mini_workdir import FORGET_SETS, default_workdir, eval_logs  # noqa: E402
from uld_serve.eval.tofu_eval import SCORING_MODES  # noqa: E402

ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]
FIRST = 300


def reference_truth_ratios(retain_logs) -> np.ndarray:
    """The retain reference's forget truth ratios, as forget quality compares against them."""
    from uld_serve.eval.summary import recompute

    recompute(retain_logs)
    return np.asarray([v["score"] for v in retain_logs["forget_truth_ratio"]["value_by_index"].values()])


def variant_key(scoring, alpha) -> str:
    return f"{scoring}:{alpha:g}"


def sweep(target, artifact, variants, limit=None) -> dict:
    from tqdm import tqdm

    from uld_serve.eval import metrics as m
    from uld_serve.eval.alpha_curve import AlphaCurve
    from uld_serve.reference import UldModel
    from uld_serve.core.tofu import load_split

    model = UldModel(target, {"a": artifact})
    forget, retain = load_split("forget10_perturbed")[:limit], load_split("retain_perturbed")[:limit]
    n_wrong = len(forget[0]["perturbed_answer"])
    sets = {
        "forget_qa": [(r["question"], r["answer"]) for r in forget],
        "forget_para": [(r["question"], r["paraphrased_answer"]) for r in forget],
        "forget_pert": [(r["question"], w) for r in forget for w in r["perturbed_answer"]],
        "retain_qa": [(r["question"], r["answer"]) for r in retain],
    }
    with tqdm(total=sum(map(len, sets.values())), desc=f"score {artifact.name}", unit="seq") as bar:
        curves = {key: AlphaCurve(model, "a", pairs, progress=bar.update) for key, pairs in sets.items()}
    out = {}
    for mode, alpha in variants:
        pert = np.asarray(curves["forget_pert"].losses(alpha, mode)).reshape(len(forget), n_wrong)
        out[variant_key(mode, alpha)] = {
            "truth_ratios": m.truth_ratios(curves["forget_para"].losses(alpha, mode), pert).tolist(),
            "forget_prob": curves["forget_qa"].mean_probability(alpha, mode),
            "retain_prob": curves["retain_qa"].mean_probability(alpha, mode),
        }
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N items per split (smoke runs; reports nothing)")
    parser.add_argument("--forget-sets", default="tuned", help="comma-separated labels or workdir folders (a label with "
                        f"a comma goes by its folder), of: {'; '.join(f'{k} ({v})' for k, v in FORGET_SETS.items())}")
    parser.add_argument("--alphas", default=",".join(f"{a:g}" for a in ALPHAS), help="comma-separated")
    parser.add_argument("--section", help="BENCHMARKS.md section to write instead of the usual one (another assistant's curve "
                        "keeps the first one's)")
    parser.add_argument("--scorings", default=",".join(SCORING_MODES), help=f"comma-separated, of: {', '.join(SCORING_MODES)}")
    args = parser.parse_args()
    from report import invocation, write_section
    from uld_serve.eval import metrics as m
    from uld_serve.eval.tofu_eval import load_logs

    work = args.workdir or default_workdir()
    reference = reference_truth_ratios(load_logs(eval_logs(work, "retain reference")))
    results = {}
    by_folder = {folder: label for label, folder in FORGET_SETS.items()}
    labels = [by_folder.get(x.strip(), x.strip()) for x in args.forget_sets.split(",")]
    scorings = [x.strip() for x in args.scorings.split(",")]
    if unknown := [x for x in scorings if x not in SCORING_MODES]:
        sys.exit(f"error: unknown scoring {unknown[0]!r}; choose from {', '.join(SCORING_MODES)}")
    try:
        alphas = [float(x) for x in args.alphas.split(",")]
    except ValueError:
        sys.exit(f"error: --alphas must be comma-separated numbers, got {args.alphas!r}")
    variants = [(scoring, alpha) for scoring in scorings for alpha in alphas]
    if unknown := [label for label in labels if label not in FORGET_SETS]:
        sys.exit(f"error: unknown forget set {unknown[0]!r}; choose from {', '.join(FORGET_SETS)}")
    for label in labels:
        folder = FORGET_SETS[label]
        if not (work / folder).exists():
            sys.exit(f"error: {work / folder} does not exist; run tofu_e2e.py and tune_assistant.py first")
        cache = work / "fq-vs-alpha" / f"{folder}{'' if args.limit is None else f'-limit{args.limit}'}.json"
        cached = json.loads(cache.read_text()) if cache.exists() else {}
        if missing := [v for v in variants if variant_key(*v) not in cached]:
            cached.update(sweep(work / "target", work / folder, missing, args.limit))
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(cached))
        results[label] = {variant_key(*v): cached[variant_key(*v)] for v in variants}
    lines = ["| assistant | scoring | alpha | forget quality | first 300 | forget truth ratio (median) | forget answer prob | "
             "retain answer prob |", "|---|---|---|---|---|---|---|---|"]
    for label, rows in results.items():
        for key, row in rows.items():
            mode, alpha = key.split(":")
            ratios = np.asarray(row["truth_ratios"])
            fq = m.ks_pvalue(ratios, reference[: len(ratios)])
            first = m.ks_pvalue(ratios[:FIRST], reference[:FIRST])  # the reference code's item count
            lines.append(f"| {label} | {mode} | {alpha} | {fq:.3g} | {first:.3g} | {np.median(ratios):.3f} | {row['forget_prob']:.4f} "
                         f"| {row['retain_prob']:.4f} |")
    lines.insert(0, f"Retain reference: forget truth ratio median {np.median(reference):.3f}. "
                    "Alpha 0 is the target. Diagnostic only: not a way to choose alpha (that reads the test metric).\n")
    print("\n".join(lines))
    if args.limit is None:
        heading = "Forget quality against alpha (diagnostic, tofu-mini)"
        write_section(f"fq-vs-alpha:mini:{args.section}" if args.section else "fq-vs-alpha:mini",
                      f"{heading} ({args.section})" if args.section else heading, invocation(), "\n".join(lines))


if __name__ == "__main__":
    main()
