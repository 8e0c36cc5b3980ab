"""Truth-ratio diagnostics (issue 32, item 3): does the assistant prefer a forgotten author's
true answer over the wrong ones by as much as the target does?

TOFU's truth ratio of an item is P(wrong) / P(paraphrased true answer), each P the geometric
mean of length-normalised answer probabilities (`uld_serve/eval/metrics.py`); forget quality is
the KS-test p-value between the forget items' ratios and those of a model that never learned
them. Serving subtracts alpha times the assistant's logits, so the served log ratio moves by
about alpha times the assistant's own gap: if the assistant prefers the true answer by as much
as the target, any alpha that cancels the target's preference flattens everything else the
target knows about those questions too, and the ratios cannot take the shape of a model that
never learned them. That would point at the training data, not the weight.

On the demo's target (`uld demo`: four TOFU authors taught to SmolLM2) the reference is the
target's own ratios on TOFU's retain_perturbed questions about authors it never learned (the
retain model's role); the forget items are forget01_perturbed (its two forgotten authors, 40
questions with 5 wrong answers each). For each forget set: the target's and the assistant's
(alone) mean log ratio on the forget items and their per-question correlation; then, served at
alphas (one forward of each model, `uld_serve/eval/alpha_curve.py`, the evaluation's default
"paper" scoring), the mean log ratio and the KS p-value against the reference.

    python benchmarks/truth_ratio_gaps.py              # the demo's forget set and those sharper_forget.py trained
    python benchmarks/truth_ratio_gaps.py --smoke      # tiny-random, a few questions; writes nothing
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
REFERENCE_ITEMS = 80


class AssistantAlone:
    """The assistant's own distribution, scored as score_pairs scores a model."""

    def __init__(self, model):
        self.model, self.tokenizer = model, model.tokenizer

    def score_logits(self, ids, mask, forget_set, alpha, relative_top, positions=None, mode=None, prefix=None):
        return self.model.score_parts(ids, mask, forget_set, positions, prefix)[1].float()


def log_ratios(losses: list, items: int):
    """Per item, log truth ratio from the mean losses of its paraphrased answer (the first
    `items` entries) and its wrong answers (the rest, item-major)."""
    import numpy as np

    from uld_serve.eval.metrics import truth_ratios

    correct = np.asarray(losses[:items])
    wrong = np.asarray(losses[items:]).reshape(items, -1)
    return np.log(truth_ratios(correct, wrong))


def pairs_of(rows: list) -> list:
    return [(r["question"], r["paraphrased_answer"]) for r in rows] + [(r["question"], w) for r in rows for w in r["perturbed_answer"]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forget-sets", default="", help="comma-separated label=DIR (default: the demo's and bench/sharper/*)")
    parser.add_argument("--smoke", action="store_true", help="tiny-random models and a few questions; writes nothing")
    args = parser.parse_args()

    import numpy as np

    from report import invocation, write_section

    from uld_serve import demo
    from uld_serve.core.artifact import read_manifest
    from uld_serve.core.models import uld_home
    from uld_serve.core.tofu import load_qa, load_split
    from uld_serve.eval.alpha_curve import AlphaCurve
    from uld_serve.eval.metrics import ks_pvalue
    from uld_serve.eval.scoring import score_pairs
    from uld_serve.reference import UldModel

    if args.smoke:
        from repetition_penalty import smoke_models

        target, demo_set = smoke_models()
        limit = 4
    else:
        target, demo_set = demo.prepare_demo()
        limit = None
    sets = {f"demo, {read_manifest(demo_set)['training']['epochs']} epochs": Path(demo_set)}
    if args.forget_sets:
        sets = {label: Path(path) for label, path in (item.split("=", 1) for item in args.forget_sets.split(","))}
    elif not args.smoke:
        sets.update({f"sharper {p.name}": p for p in sorted((uld_home() / "bench" / "sharper").glob("e*"))
                     if (p / "uld.json").exists() and read_manifest(p) != read_manifest(demo_set)})  # the demo's is listed

    learned = {qa.question for qa in load_qa(demo.TARGET_DATA)}
    forget_rows = list(load_split("forget01_perturbed"))[:limit]
    reference_rows = [r for r in load_split("retain_perturbed") if r["question"] not in learned][:limit or REFERENCE_ITEMS]
    model = UldModel(target, {label: str(path) for label, path in sets.items()})
    reference = log_ratios([r["avg_loss"] for r in score_pairs(model, pairs_of(reference_rows))], len(reference_rows))
    forget_pairs = pairs_of(forget_rows)
    at_target = log_ratios([r["avg_loss"] for r in score_pairs(model, forget_pairs)], len(forget_rows))
    n = len(forget_rows)
    lines = [f"Demo target; forget items: forget01_perturbed ({n} questions); reference: the target on {len(reference_rows)} "
             "retain_perturbed questions about authors it never learned (mean log truth ratio "
             f"{reference.mean():.3f}; the target on the forget items: {at_target.mean():.3f}, KS p-value "
             f"{ks_pvalue(at_target, reference):.2g}). Log truth ratio = log P(wrong) - log P(paraphrased true answer): "
             "0 = no preference, negative = the true answer preferred.", "",
             "| forget set | calibrated alpha | assistant alone: mean log ratio | correlation with the target's, per question | "
             + " | ".join(f"served at {a:g}: mean log ratio / KS p" for a in ALPHAS) + " |",
             "|---|---|---|---|" + "---|" * len(ALPHAS)]
    for label, path in sets.items():
        alone = log_ratios([r["avg_loss"] for r in score_pairs(AssistantAlone(model), forget_pairs, label)], n)
        curve = AlphaCurve(model, label, forget_pairs)
        served = [log_ratios(curve.losses(a, "paper"), n) for a in ALPHAS]
        correlation = float(np.corrcoef(at_target, alone)[0, 1])
        lines.append(f"| {label} | {read_manifest(path)['alpha']:.3f} | {alone.mean():.3f} | {correlation:.2f} | "
                     + " | ".join(f"{s.mean():.3f} / {ks_pvalue(s, reference):.2g}" for s in served) + " |")
    text = "\n".join(lines)
    print(text)
    if not args.smoke:
        write_section("truth-ratio-gaps", "Truth-ratio diagnostics: the assistant's preference against the target's",
                      invocation(), text)


if __name__ == "__main__":
    main()
