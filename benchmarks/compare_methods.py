"""ULD against weight-level unlearning on one benchmark: the tofu-mini protocol of
tofu_e2e.py (SmolLM2 target that learned 40 TOFU authors, forget10), every method of
`uld unlearn` with the same budget (LoRA r32 on every linear, 5 epochs, batch 8), one table
and one scatter plot in BENCHMARKS.md.

    python benchmarks/tofu_e2e.py --until finetune_target     # first: the target (--until eval_retain: and
                                                              # the retain reference, if not yet recorded)
    python benchmarks/compare_methods.py                      # every method not yet recorded
    python benchmarks/compare_methods.py --methods npo,simnpo # a subset
    python benchmarks/compare_methods.py --report-only        # the table from what is recorded

What is measured is recorded as it comes in benchmarks/results/compare-mini/summary.json (one
row per evaluated model, each validation score, the target's fingerprint; the retain reference's
TOFU_EVAL.json beside it), so a run that stops, even on another machine, goes on with the next
missing piece: the target fine-tune (fp32, the protocol's precision) is deterministic for its seed
on one kind of CPU; a target with another fingerprint is refused unless its own evaluation
matches the recorded target row (a rebuild on another kind of CPU rounds differently).

Hyperparameters start from each paper's defaults (the methods' own defaults); only the
learning rate is chosen, and never on forget10: each candidate is trained to forget a
validation split, authors 10-19 of the target's 20 retained authors (tofu:full[200:400]),
with authors 0-9 (tofu:full[:200]) as retain data. The rule: among candidates whose
normalised answer probability on real authors + world facts (the correct answer's
probability over it and the three perturbed ones, as in model utility) stays >= 95% of the
target's, the one with the lowest probability on the validation forget answers (else the
one with the best utility). Not the raw answer probability: the target gives those bare
answers ("William Shakespeare") 0.0008 on average, since a chat model does not start an answer
that way, too small to tell lost knowledge from changed style. (tune_assistant.py's
rule for ULD used the raw probability with a floor on served general answers, which was the
binding one; it ran before this was noticed.) ULD appears with its paper defaults (tofu_e2e.py) and, once
tune_assistant.py has run, with training settings and alpha chosen on the same split by its
validation forget quality (that script's docstring); their rows
and the target's are recorded from those scripts' evaluations when the workdir holds them.
"""
import argparse
import json
import math
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from mini_workdir import FORGET_SETS, calibrated, default_workdir, eval_logs, transferred  # noqa: E402
from tofu_e2e import PROTOCOLS, flags, uld  # noqa: E402

from uld_training.unlearn import METHODS as REGISTRY  # noqa: E402

METHODS = list(REGISTRY)  # the registry's order
BUDGET = {"epochs": 5, "batch_size": 8, "precision": PROTOCOLS["mini"]["precision"], "rank": 32, "lora_alpha": 32}
LEARNING_RATES = [1e-4, 1e-3]
VALIDATION = {"forget": "tofu:full[200:400]", "retain": "tofu:full[:200]"}
UTILITY_FLOOR = 0.95
# a rebuilt retain reference or target counts as the recorded one when every summary number is
# this close (relative; or absolutely within SAME_NEAR_ZERO, for numbers near 0: forget quality's
# p-values, privleak in percent, which is 0 for the reference against itself): rebuilds on other
# kinds of CPU matched the retain reference's numbers to 1e-7 (AVX2) and 3e-5 (Intel AMX, fp32),
# while the AMX rebuild's target was up to 2% apart and is refused (BENCHMARKS.md); the methods'
# rows differ from each other by 1e-2 and more
SAME_BEHAVIOUR = 1e-3
SAME_NEAR_ZERO = {"privleak": 0.05}  # the rest: 1e-6
EVAL_FLAGS = []  # --smoke adds --limit
VALIDATION_LIMIT = [None]
RESULTS = REPO / "benchmarks" / "results" / "compare-mini"


def parse_methods(text: str) -> list:
    """The comma-separated method names of --methods; exits with one sentence on an unknown one."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        sys.exit(f"error: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    return methods


def validation_pairs(limit=None) -> dict:
    """The (question, answer) pairs of tune_assistant.py's rule: the validation forget split's, and
    real authors + world facts' (its utility side, raw probabilities at a calibrated alpha)."""
    from uld_serve.core.tofu import load_qa, load_split

    utility = [(r["question"], r["answer"]) for s in ("real_authors", "world_facts") for r in load_split(s)]
    return {"forget": [(qa.question, qa.answer) for qa in load_qa(VALIDATION["forget"])][:limit], "utility": utility[:limit]}


def validation_scores(target, artifact=None):
    """Mean answer probability on the validation forget split; mean normalised probability
    of the correct answer on real authors + world facts."""
    import numpy as np

    from uld_serve.eval.metrics import normalised_probabilities
    from uld_serve.eval.scoring import mean_answer_probability, score_pairs
    from uld_serve.reference import UldModel
    from uld_serve.core.tofu import load_qa, load_split

    model = UldModel(target, {"m": artifact} if artifact else {})
    name = "m" if artifact else None
    limit = VALIDATION_LIMIT[0]
    forget = [(qa.question, qa.answer) for qa in load_qa(VALIDATION["forget"])][:limit]
    utility = []
    for split in ("real_authors_perturbed", "world_facts_perturbed"):
        rows = load_split(split)[:limit]
        pairs = [(r["question"], option) for r in rows for option in (r["answer"], *r["perturbed_answer"])]
        probs = np.exp(-np.array([s["avg_loss"] for s in score_pairs(model, pairs, name)])).reshape(len(rows), -1)
        utility += normalised_probabilities(probs[:, 0], probs[:, 1:]).tolist()
    return {"forget_prob": mean_answer_probability(model, forget, name), "utility_prob": sum(utility) / len(utility)}


def choose_lr(method, runs, target, record, save):
    """Train each candidate on the validation split (scores already in the record are reused);
    return the chosen lr."""
    scores = record["validation"].setdefault(method, {})
    for lr in LEARNING_RATES:
        if f"{lr:g}" not in scores:
            artifact = runs / "validation" / f"{method}-lr{lr:g}"
            if not artifact.exists():
                uld("unlearn", "--method", method, "--target", target, "--forget", VALIDATION["forget"],
                    "--retain", VALIDATION["retain"], "--out", artifact, "--lr", lr, *flags(BUDGET))
            scores[f"{lr:g}"] = validation_scores(target, artifact)
            save()
    floor = UTILITY_FLOOR * record["validation"]["target"]["utility_prob"]
    score = {lr: scores[f"{lr:g}"] for lr in LEARNING_RATES}
    kept = [lr for lr in LEARNING_RATES if score[lr]["utility_prob"] >= floor]
    return min(kept, key=lambda lr: score[lr]["forget_prob"]) if kept else max(LEARNING_RATES, key=lambda lr: score[lr]["utility_prob"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the table from the recorded results")
    parser.add_argument("--smoke", action="store_true",
                        help="2 training steps and 4 items per eval split, all under <workdir>/compare-smoke: "
                             "checks the script, publishes nothing")
    args = parser.parse_args()
    if args.smoke:
        BUDGET.update(max_steps=2, precision="fp32")
        EVAL_FLAGS.extend(["--limit", "4", "--max-new-tokens", "8"])
        VALIDATION_LIMIT[0] = 4
    methods = parse_methods(args.methods)
    work = args.workdir or default_workdir()
    runs = work / "compare-smoke" if args.smoke else work
    results = runs if args.smoke else RESULTS
    record = load_record(results / "summary.json")
    if args.report_only:
        return write_results(record, results, publish=not args.smoke)
    target = work / "target"
    retain_logs = recorded_retain_logs(work, results)
    if not target.exists():
        sys.exit("error: run benchmarks/tofu_e2e.py --until finetune_target first (it trains the target)")
    from uld_serve.eval.tofu_eval import load_logs

    reference = load_logs(retain_logs)  # parsed once: every row's forget quality is measured against it
    check_target(record, target, work, reference, results / "summary.json")

    def save():
        save_record(record, results / "summary.json")

    add_baselines(record, work, reference)
    if "target" not in record["validation"]:
        record["validation"]["target"] = validation_scores(target)
    save()
    for method in methods:
        if method in record["models"]:
            continue
        lr = choose_lr(method, runs, target, record, save)
        artifact = runs / "methods" / method
        if not artifact.exists():
            uld("unlearn", "--method", method, "--target", target, "--forget", "tofu:forget10",
                "--retain", PROTOCOLS["mini"]["assistant_retain"], "--out", artifact, "--lr", lr, *flags(BUDGET))
        logs = runs / "eval-methods" / method / "TOFU_EVAL.json"
        if not logs.exists():
            uld("eval", "tofu", "--target", target, "--forget-set", f"{method}={artifact}", "--out", logs.parent,
                "--retain-logs", retain_logs, "--generate-with", "vllm", *EVAL_FLAGS)
        record["models"][method] = model_row(logs, reference, artifact)
        save()
    write_results(record, results, publish=not args.smoke)


def load_record(path: Path) -> dict:
    """What the comparison has measured so far: the target's fingerprint, one row per evaluated
    model and the validation scores. It lives in the repository, so a new machine that rebuilds the
    target (bit-identical for the same seed on the same kind of CPU) goes on where the last one stopped."""
    if path.exists():
        return json.loads(path.read_text())
    return {"target_fingerprint": None, "models": {}, "validation": {}}


def save_record(record: dict, path: Path) -> None:
    from uld_serve.core.atomic import write_json_atomic

    write_json_atomic(path, record)


def recorded_retain_logs(work: Path, results: Path) -> Path:
    """The retain reference's TOFU_EVAL.json that every recorded forget quality is measured against,
    kept beside the record (so a new machine need not train and evaluate the retain model again).
    A workdir's own retain reference must match it: byte for byte, or (a rebuild on another kind
    of CPU, whose fp32 kernels round differently) within SAME_BEHAVIOUR on every summary number."""
    import filecmp
    import shutil

    recorded, fresh = results / "retain-reference.TOFU_EVAL.json", eval_logs(work, "retain reference")
    if fresh.exists() and recorded.exists() and not filecmp.cmp(fresh, recorded, shallow=False):
        from uld_serve.eval.tofu_eval import load_logs

        reference = load_logs(recorded)
        differs = different_numbers(summary(fresh, reference), summary(recorded, reference))
        if differs:
            sys.exit(f"error: {fresh} differs from the recorded {recorded} ({differs}); the recorded rows were measured "
                     "against the latter")
        print(f"{fresh} equals the recorded retain reference within {SAME_BEHAVIOUR:g} (rounding): the recorded one is used")
    if fresh.exists() and not recorded.exists():
        results.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fresh, recorded)
    if not recorded.exists():
        sys.exit("error: run benchmarks/tofu_e2e.py --until eval_retain first (it evaluates the retain reference)")
    return recorded


def check_target(record: dict, target: Path, work: Path, reference: dict, path: Path) -> None:
    """Rows measured on another target are not comparable: refuse to mix them. A target rebuilt
    from the same data and seed on another kind of CPU differs in its bytes (fp32 rounding); it is
    taken for the recorded one when its own evaluation (tofu_e2e.py's eval_target) matches the
    recorded target row within SAME_BEHAVIOUR on every summary number, and its fingerprint is kept
    in the record's `equivalent_targets`."""
    from uld_serve.core.models import fingerprint

    found = fingerprint(target)
    expected = record["target_fingerprint"]
    if expected and expected != found and found not in record.get("equivalent_targets", []):
        logs, row = eval_logs(work, "target"), record["models"].get("target")
        if not (logs.exists() and row):
            sys.exit(f"error: the workdir's target ({found[:12]}) is not the one the recorded results were measured on "
                     f"({expected[:12]}); evaluate it (tofu_e2e.py --until eval_target) to check that it behaves the same, "
                     f"or move {path} away to start a new comparison")
        differs = different_numbers(summary(logs, reference), row["summary"])
        if differs:
            sys.exit(f"error: the workdir's target ({found[:12]}) is not the one the recorded results were measured on "
                     f"({expected[:12]}) and its evaluation differs ({differs}); move {path} away to start a new comparison")
        print(f"the workdir's target ({found[:12]}) evaluates as the recorded one ({expected[:12]}) within {SAME_BEHAVIOUR:g}")
        record.setdefault("equivalent_targets", []).append(found)
    record["target_fingerprint"] = expected or found


def different_numbers(a: dict, b: dict) -> str:
    """The summary numbers of `a` and `b` that differ by more than SAME_BEHAVIOUR, as
    'name a vs b', comma-separated; empty when none does."""
    keys = [k for k in a if isinstance(a[k], (int, float)) and isinstance(b.get(k), (int, float))]
    return ", ".join(f"{k} {a[k]:.6g} vs {b[k]:.6g}" for k in keys
                     if not math.isclose(a[k], b[k], rel_tol=SAME_BEHAVIOUR, abs_tol=SAME_NEAR_ZERO.get(k, 1e-6)))


def add_baselines(record, work, reference):
    """The target's and ULD's rows, from tofu_e2e.py's and tune_assistant.py's evaluations in the workdir."""
    if eval_logs(work, "target").exists():
        record["models"]["target"] = {"summary": summary(eval_logs(work, "target"), reference)}
    uld_rows = [("ULD, paper settings, paper scoring", "paper settings"), ("ULD, paper settings, anchored scoring", "paper settings"),
                ("ULD, tuned, anchored scoring", "tuned")]
    uld_rows += [(label_of(name), name) for name in FORGET_SETS for label_of in (calibrated, transferred)]
    for label, assistant in uld_rows:
        if eval_logs(work, label).exists():
            record["models"][label] = model_row(eval_logs(work, label), reference, work / FORGET_SETS[assistant])


def summary(logs: Path, reference: dict) -> dict:
    from uld_serve.eval.summary import recompute
    from uld_serve.eval.tofu_eval import load_logs

    return recompute(load_logs(logs), reference)


def model_row(logs: Path, reference: dict, artifact: Path) -> dict:
    """A table row: the TOFU summary and the training's cost, from its artifact."""
    manifest = json.loads((artifact / "uld.json").read_text())
    training = manifest.get("training", {})
    seconds = train_seconds(artifact)
    return {"summary": summary(logs, reference), "train_s": seconds,
            "train_s_per_epoch": round(seconds / training["epochs"], 1) if training.get("max_steps") is None else None,
            "trainable_parameters": adapter_parameters(artifact),
            "peak_rss_mib": manifest.get("result", {}).get("peak_rss_mib"), "lr": training.get("lr")}


def adapter_parameters(artifact: Path) -> int:
    """Trainable parameters of an artifact, counted from its adapter file (older manifests lack them)."""
    from safetensors import safe_open

    with safe_open(str(artifact / "adapter_model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def train_seconds(artifact: Path) -> float:
    """Steps times the median step time from the training log: the wall time of an undisturbed
    run (a paused or shared machine inflates the plain wall clock, not the median step)."""
    history = json.loads((artifact / "training_log.json").read_text())
    walls = [0.0] + [h["wall_s"] for h in history]
    return round(statistics.median(b - a for a, b in zip(walls, walls[1:])) * len(history), 1)


def write_results(record, out: Path, publish=True):
    """The table and plot from the record: target, ULD, then the methods."""
    models = record["models"]
    order = [label for label in models if label == "target"] + [label for label in models if label.startswith("ULD")]
    order += [method for method in METHODS if method in models]
    lines = ["| model | forget quality | model utility | forget ROUGE-L | privleak | train s | train s per epoch | trainable params "
             "| peak RSS MiB | lr |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label in order:
        row, s = models[label], models[label]["summary"]
        cells = [row.get(key) for key in ("train_s", "train_s_per_epoch", "trainable_parameters", "peak_rss_mib", "lr")]
        cells = ["" if label == "target" else "n/a" if cell is None else cell for cell in cells]
        lines.append(f"| {'target (no unlearning)' if label == 'target' else label} | {s['forget_quality']:.3g} | "
                     f"{s['model_utility']:.4f} | {s['forget_Q_A_ROUGE']:.4f} | {s['privleak']:.2f} | "
                     + " | ".join(map(str, cells)) + " |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"budget": BUDGET, "learning_rates": LEARNING_RATES, "validation": VALIDATION,
                                                 "utility_floor": UTILITY_FLOOR, "protocol": PROTOCOLS["mini"]}, indent=2) + "\n")
    from report import utility_scatter

    utility_scatter({label: models[label]["summary"] for label in order}, out / "forget_quality_vs_utility.png",
                    "TOFU forget10 (tofu-mini), SmolLM2-135M")
    text = "\n".join(lines)
    print(text)
    if publish:
        record_section(text)


def record_section(text):
    from report import write_section

    write_section("compare-methods:mini", "ULD against weight-level unlearning (tofu-mini)", "python benchmarks/compare_methods.py",
                  "Protocol, per-model summaries and validation scores in `benchmarks/results/compare-mini/`. Train s = "
                  "steps x the median step time of the training log (unaffected by pauses); learning rates chosen on the "
                  "validation split described in the script.\n\n" + text + "\n\n"
                  "![forget quality vs model utility](benchmarks/results/compare-mini/forget_quality_vs_utility.png)")


if __name__ == "__main__":
    main()
