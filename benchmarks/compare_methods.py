"""ULD against weight-level unlearning on one benchmark: the tofu-mini protocol of
tofu_e2e.py (SmolLM2 target that learned 40 TOFU authors, forget10), every method of
`uld unlearn` with the same budget (LoRA r32 on every linear, 5 epochs, batch 8), one table
and one scatter plot in BENCHMARKS.md.

    python benchmarks/compare_methods.py                      # every method
    python benchmarks/compare_methods.py --methods npo,simnpo # a subset (stages are cached)
    python benchmarks/compare_methods.py --report-only        # the table from what is evaluated so far

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
tune_assistant.py has run, with training settings chosen on the same split and its alpha
calibrated against authors the target never learned (that script's docstring). The
target, retain reference, their evaluations and the ULD assistants come from those
scripts' caches (run tofu_e2e.py first).
"""
import argparse
import json
import math
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from mini_workdir import FORGET_SETS, calibrated, default_workdir, eval_logs  # noqa: E402
from tofu_e2e import PROTOCOLS, flags, uld  # noqa: E402

METHODS = ["ga", "graddiff", "npo", "simnpo", "wga", "tnpo", "wtnpo", "mollm", "soul"]
BUDGET = {"epochs": 5, "batch_size": 8, "precision": "auto", "rank": 32, "lora_alpha": 32}
LEARNING_RATES = [1e-4, 1e-3]
VALIDATION = {"forget": "tofu:full[200:400]", "retain": "tofu:full[:200]"}
UTILITY_FLOOR = 0.95
EVAL_FLAGS = []  # --smoke adds --limit
VALIDATION_LIMIT = [None]


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
    from uld_serve.tofu import load_qa, load_split

    utility = [(r["question"], r["answer"]) for s in ("real_authors", "world_facts") for r in load_split(s)]
    return {"forget": [(qa.question, qa.answer) for qa in load_qa(VALIDATION["forget"])][:limit], "utility": utility[:limit]}


def validation_scores(target, artifact=None):
    """Mean answer probability on the validation forget split; mean normalised probability
    of the correct answer on real authors + world facts."""
    import numpy as np

    from uld_serve.eval.metrics import normalised_probabilities
    from uld_serve.eval.scoring import mean_answer_probability, score_pairs
    from uld_serve.reference import UldModel
    from uld_serve.tofu import load_qa, load_split

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


def choose_lr(method, work, target, target_scores):
    """Train each candidate on the validation split; return (chosen lr, all scores)."""
    scores = {}
    for lr in LEARNING_RATES:
        run = work / "validation" / f"{method}-lr{lr:g}"
        path = run / "scores.json"
        if not path.exists():
            if not (run / "artifact").exists():
                uld("unlearn", "--method", method, "--target", target, "--forget", VALIDATION["forget"],
                    "--retain", VALIDATION["retain"], "--out", run / "artifact", "--lr", lr, *flags(BUDGET))
            path.write_text(json.dumps(validation_scores(target, run / "artifact")))
        scores[lr] = json.loads(path.read_text())
    floor = UTILITY_FLOOR * target_scores["utility_prob"]
    kept = [lr for lr in LEARNING_RATES if scores[lr]["utility_prob"] >= floor]
    chosen = min(kept, key=lambda lr: scores[lr]["forget_prob"]) if kept else max(LEARNING_RATES, key=lambda lr: scores[lr]["utility_prob"])
    return chosen, scores


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the table from the methods evaluated so far")
    parser.add_argument("--smoke", action="store_true",
                        help="2 training steps and 4 items per eval split: checks the script, reports nothing")
    args = parser.parse_args()
    if args.smoke:
        BUDGET.update(max_steps=2, precision="fp32")
        EVAL_FLAGS.extend(["--limit", "4", "--max-new-tokens", "8"])
        VALIDATION_LIMIT[0] = 4
    methods = parse_methods(args.methods)
    work = args.workdir or default_workdir()
    target, retain_logs = work / "target", eval_logs(work, "retain reference")
    if not (target.exists() and retain_logs.exists()):
        sys.exit("error: run benchmarks/tofu_e2e.py first (it trains the target and evaluates the retain reference)")
    if args.report_only:
        return write_results(work)
    protocol = PROTOCOLS["mini"]
    target_scores_path = work / "validation" / "target-scores.json"
    if not target_scores_path.exists():
        target_scores_path.parent.mkdir(parents=True, exist_ok=True)
        target_scores_path.write_text(json.dumps(validation_scores(target)))
    target_scores = json.loads(target_scores_path.read_text())
    for method in methods:
        lr, scores = choose_lr(method, work, target, target_scores)
        artifact = work / "methods" / method
        if not artifact.exists():
            uld("unlearn", "--method", method, "--target", target, "--forget", "tofu:forget10",
                "--retain", protocol["assistant_retain"], "--out", artifact, "--lr", lr, *flags(BUDGET))
        (work / "methods" / f"{method}.validation.json").write_text(json.dumps({"chosen_lr": lr, "scores": scores, "target": target_scores}, indent=2))
        if not method_logs(work, method).exists():
            uld("eval", "tofu", "--target", target, "--forget-set", f"{method}={artifact}", "--out", method_logs(work, method).parent,
                "--retain-logs", retain_logs, "--generate-with", "vllm", *EVAL_FLAGS)
    write_results(work, publish=not args.smoke)


def method_logs(work, method) -> Path:
    return work / "eval-methods" / method / "TOFU_EVAL.json"


def rows(work):
    """(label, TOFU_EVAL.json, artifact directory) for ULD and every method evaluated so far."""
    uld_rows = [("ULD, paper settings, paper scoring", "paper settings"), ("ULD, paper settings, anchored scoring", "paper settings"),
                ("ULD, tuned, anchored scoring", "tuned")]
    out = [(label, eval_logs(work, label), work / FORGET_SETS[assistant]) for label, assistant in uld_rows
           if eval_logs(work, label).exists()]
    out += [(calibrated(label), eval_logs(work, calibrated(label)), work / folder) for label, folder in FORGET_SETS.items()
            if eval_logs(work, calibrated(label)).exists()]
    for method in METHODS:
        logs = method_logs(work, method)
        if logs.exists():
            out.append((method, logs, work / "methods" / method))
    return out


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


def write_results(work, publish=True):
    """The table and plot; published to benchmarks/results and BENCHMARKS.md, or (smoke runs)
    left in the workdir.""" 
    from uld_serve.eval.summary import recompute
    from uld_serve.eval.tofu_eval import load_logs

    reference = load_logs(eval_logs(work, "retain reference"))
    target = recompute(load_logs(eval_logs(work, "target")), reference)
    lines = ["| model | forget quality | model utility | forget ROUGE-L | privleak | train s | train s per epoch | trainable params | peak RSS MiB | lr |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| target (no unlearning) | {target['forget_quality']:.3g} | {target['model_utility']:.4f} | "
             f"{target['forget_Q_A_ROUGE']:.4f} | {target['privleak']:.2f} | | | | | |"]
    points = {"target": target}
    for label, logs, artifact in rows(work):
        manifest = json.loads((artifact / "uld.json").read_text())
        s = recompute(load_logs(logs), reference)
        points[label] = s
        result = {"trainable_parameters": adapter_parameters(artifact), **manifest.get("result", {})}
        training = manifest.get("training", {})
        seconds = train_seconds(artifact)
        per_epoch = round(seconds / training["epochs"], 1) if training.get("max_steps") is None else "n/a"
        lines.append(f"| {label} | {s['forget_quality']:.3g} | {s['model_utility']:.4f} | {s['forget_Q_A_ROUGE']:.4f} | "
                     f"{s['privleak']:.2f} | {seconds} | {per_epoch} | {result.get('trainable_parameters', 'n/a')} | "
                     f"{result.get('peak_rss_mib', 'n/a')} | {training.get('lr')} |")
    out = REPO / "benchmarks" / "results" / "compare-mini" if publish else work / "compare-smoke"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(points, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps({"budget": BUDGET, "learning_rates": LEARNING_RATES, "validation": VALIDATION,
                                                 "utility_floor": UTILITY_FLOOR, "protocol": PROTOCOLS["mini"]}, indent=2) + "\n")
    from report import utility_scatter

    utility_scatter(points, out / "forget_quality_vs_utility.png", "TOFU forget10 (tofu-mini), SmolLM2-135M")
    text = "\n".join(lines)
    print(text)
    if publish:
        record(text)


def record(text):
    from report import write_section

    write_section("compare-methods:mini", "ULD against weight-level unlearning (tofu-mini)", "python benchmarks/compare_methods.py",
                  "Protocol and per-model summaries in `benchmarks/results/compare-mini/`. Train s = steps x the "
                  "median step time of the training log (unaffected by pauses); learning rates chosen on the "
                  "validation split described in the script.\n\n" + text + "\n\n"
                  "![forget quality vs model utility](benchmarks/results/compare-mini/forget_quality_vs_utility.png)")


if __name__ == "__main__":
    main()
