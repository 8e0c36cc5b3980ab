"""What TOFU model utility a know-nothing assistant leaves on the tofu-mini target.

ULD's retain term asks the assistant to be uniform on everything but its forget set. On SmolLM2
no assistant can be: its logits leave through the target's final norm and tied head, and the
most uniform output any hidden state reaches is a fixed logit vector b (uniform_floor.py finds
it). An assistant that satisfied the retain term perfectly would output b at every position
outside its forget set, so served as target - alpha * b (filtered, anchored scoring: what
`uld eval tofu` serves and scores) the target's model utility at alpha is what a forget set
that fully met the retain term would keep at that alpha. It is no bound: an assistant off the
floor can move an answer's probability either way. This evaluates exactly that, with `uld eval
tofu`'s code (greedy answers by reference decoding), at the alpha tune_assistant.py's rule chose
for forget10 (choice-unaugmented.json) unless --alphas names others, and sets it beside the
target and the forget10 assistant's own evaluation at the same alpha.

It also reads, at each alpha, the share of the famous names the target knows that the floor's
served answers still hold (famous_names.py's check, reference decoding), beside the forget10
assistant's own share: where the floor loses as many, the loss is the subtraction's at that
alpha on this model, not the assistant's. --famous-only reads that alone (minutes, not the
evaluation's hour).

    python benchmarks/floor_utility.py                 # after tune_assistant.py --unaugmented
    python benchmarks/floor_utility.py --alphas 0.5,0.75
    python benchmarks/floor_utility.py --famous-only
    python benchmarks/floor_utility.py --smoke         # 4 items per split, 8 tokens; writes nothing
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from famous_names import TARGET_ANSWERS as FAMOUS_TARGET, kept  # noqa: E402
from mini_workdir import CHOICES, TUNE, cached, default_workdir, eval_logs, forget10_summaries  # noqa: E402
from uniform_floor import floor  # noqa: E402

from uld_serve.core.atomic import write_json_atomic  # noqa: E402
from uld_serve.eval.summary import UTILITY  # noqa: E402

FORGET_SET = "forget10"


class ConstantLogits:
    """Stands where the assistant's causal LM is called while generating: the same logits b at every position."""

    def __init__(self, bias):
        self.bias = bias

    def __call__(self, input_ids, **_):
        return SimpleNamespace(logits=self.bias.to(input_ids.device).expand(*input_ids.shape, -1))


def floor_model(target: Path, forget_set: Path):
    """A UldModel whose forget set's assistant outputs the floor's logits b everywhere; the
    forget set's manifest still supplies r and the run key. Returns (model, floor summary)."""
    from uld_serve.reference import UldModel

    class FloorModel(UldModel):
        def score_parts(self, input_ids, attention_mask, forget_set=None, positions=None, prefix=None):
            t, _ = super().score_parts(input_ids, attention_mask, None, positions, prefix)
            return t, None if forget_set is None else self.bias.to(t.device).expand_as(t)

        def _assistant(self, fs):
            return ConstantLogits(self.bias)

    model = FloorModel(target, {FORGET_SET: forget_set})
    found = floor(model.target)
    model.bias = found["logits"]
    return model, found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--alphas", help="comma-separated (default: the rule's alpha for forget10, unaugmented choice)")
    parser.add_argument("--famous-only", action="store_true", help="only the famous-names check, not the TOFU evaluation")
    parser.add_argument("--smoke", action="store_true", help="4 items per split, 8 new tokens; writes nothing")
    args = parser.parse_args()
    work = args.workdir or default_workdir()
    choice_path = work / TUNE / CHOICES[True]
    if not choice_path.exists():
        sys.exit("error: run benchmarks/tune_assistant.py --unaugmented first (its choice names the forget set and alpha)")
    choice = json.loads(choice_path.read_text())
    try:
        alphas = [float(a) for a in args.alphas.split(",")] if args.alphas else [choice["alpha"]]
    except ValueError:
        sys.exit(f"error: --alphas must be comma-separated numbers, got {args.alphas!r}")

    from uld_serve.eval.tofu_eval import evaluate_tofu

    model, found = floor_model(work / "target", work / choice["final"])
    out = Path(tempfile.mkdtemp()) if args.smoke else work
    famous = {alpha: famous_kept(model, out, alpha, limit=4 if args.smoke else None) for alpha in alphas}
    summaries = {}
    for alpha in [] if args.famous_only else alphas:
        folder = out / f"eval-floor-{alpha:g}"
        if not (folder / "TOFU_SUMMARY.json").exists():
            evaluate_tofu(model, folder, forget_set=FORGET_SET, alpha=alpha, retain_logs=eval_logs(work, "retain reference"),
                          label=f"floor logits, alpha {alpha:g}", scoring="anchored",
                          **({"limit": 4, "max_new_tokens": 8} if args.smoke else {}))
        summaries[alpha] = json.loads((folder / "TOFU_SUMMARY.json").read_text())
    if args.smoke:
        print(json.dumps({f"{a:g}": {"model_utility": summaries[a]["model_utility"] if summaries else None,
                                     "famous_kept": famous[a]["kept"]} for a in alphas}))
        return
    record_famous(work, choice, famous)
    if summaries:
        record(work, choice, found, summaries)


def famous_kept(model, work: Path, alpha: float, limit=None) -> dict:
    """famous_names.kept for the floor at `alpha`, cached in the workdir (the target's answers in
    the cache tune_assistant.py fills)."""
    return cached(work / f"famous-floor-{alpha:g}.json",
                  lambda: kept(model, FORGET_SET, [alpha], work / TUNE / FAMOUS_TARGET, limit)[f"{alpha:g}"])


def record_famous(work: Path, choice: dict, famous: dict):
    from report import invocation, write_section

    cache = work / TUNE / f"{choice['final']}-famous.json"
    assistant = json.loads(cache.read_text()) if cache.exists() else {}
    lines = ["| served | alpha | famous names kept | lost |", "|---|---|---|---|"]
    for alpha, share in assistant.items():
        lines.append(f"| the forget10 assistant ({choice['final']}) | {alpha} | {share['kept']:.3f} | {'; '.join(share['lost'])} |")
    for alpha, share in famous.items():
        lines.append(f"| the floor's logits b at every position | {alpha:g} | {share['kept']:.3f} | {'; '.join(share['lost'])} |")
    known = next(iter(famous.values()))["known"]
    out = REPO / "benchmarks" / "results" / "floor-utility"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "famous-names.json", {"choice": choice, "assistant": assistant,
                                                  "floor": {f"{a:g}": f for a, f in famous.items()}})
    text = (f"tofu-mini target (fp32), forget10's filter r; famous_names.py's check: of the {known} famous people the "
            "target names right (greedy), the share whose served greedy answer still names them. The assistant's answers "
            "by the vLLM engine (tune_assistant.py's cache), the floor's by reference decoding (the same tokens in fp32).\n\n"
            + "\n".join(lines))
    print(text)
    write_section("floor-famous-names", "Famous names a know-nothing assistant keeps (tofu-mini)", invocation(), text)


def record(work: Path, choice: dict, found: dict, summaries: dict):
    from report import invocation, write_section

    from mini_workdir import transferred

    evaluated = forget10_summaries(work, ["target", transferred(choice["label"])])
    target = evaluated.pop("target")["all"]
    rows = {"target (alpha 0)": target}
    for summary in evaluated.values():
        rows[f"the forget10 assistant ({choice['final']}), alpha {summary.get('alpha', choice['alpha']):g}"] = summary["all"]
    for alpha, summary in summaries.items():
        rows[f"the floor's logits b at every position, alpha {alpha:g}"] = summary
    out = REPO / "benchmarks" / "results" / "floor-utility"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "summaries.json", {"choice": choice, "floor_excess": found["excess"], "floor_std": found["std"],
                                               "rows": rows})
    lines = ["| served | model utility (x target) | forget quality | " + " | ".join(UTILITY) + " |",
             "|---|---|---|" + "---|" * len(UTILITY)]
    for label, s in rows.items():
        parts = " | ".join(f"{s[key]:.3f} ({s[key] / target[key]:.2f}x)" for key in UTILITY)
        lines.append(f"| {label} | {s['model_utility']:.4f} ({s['model_utility'] / target['model_utility']:.2f}x) | "
                     f"{s['forget_quality']:.3g} | {parts} |")
    text = (f"tofu-mini target (fp32), filter r and scoring as `uld eval tofu` serves forget10 (anchored); the floor's logits "
            f"b: excess uniform CE {found['excess']:.3f} nats, std {found['std']:.3f} over the vocabulary. Greedy answers by "
            "reference decoding for the floor, by the vLLM engine for the forget10 assistant (the same tokens in fp32).\n\n"
            + "\n".join(lines))
    print(text)
    write_section("floor-utility", "The model utility a know-nothing assistant leaves (tofu-mini)", invocation(), text)


if __name__ == "__main__":
    main()
