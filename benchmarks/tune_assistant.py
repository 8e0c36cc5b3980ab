"""Choose the ULD assistant's settings on a validation split, then train the tofu-mini forget10
assistant with them, calibrate its alpha on its own forget set, and evaluate it.

    python benchmarks/tune_assistant.py          # after tofu_e2e.py (target, retain reference)
    python benchmarks/tune_assistant.py --smoke  # 2 steps, 4 items per split: checks the script

The rule, in two steps, never looks at forget quality or the retain reference:
1. Training settings, on compare_methods.py's validation split: each candidate assistant learns
   to remember authors 10-19 of the target's 20 retained authors (tofu:full[200:400]) and to
   know nothing of authors 0-9 (tofu:full[:200]). Its alpha is calibrated (`uld
   calibrate-alpha`): the smallest alpha at which the validation forget answers are no more
   likely than the target finds answers about authors it never learned (tofu:full[400:600]:
   the tofu-mini target saw only full[:400] and forget10). A candidate passes two floors at
   that alpha: its mean answer probability on real authors + world facts stays >= 95% of the
   target's, and its greedy answers to held-out general questions (general_qa.py's
   heldout.jsonl) keep >= 95% ROUGE-L recall of the target's own answers (the probability
   floor cannot see served text break). Among those that pass, the highest answer
   probability wins; if none passes, the best greedy agreement wins (served text is what a
   user gets). Candidates marked "general" add general_qa.py's train.jsonl to their retain
   data.
2. The forget10 assistant is trained with those settings, and its alpha is calibrated the same
   way on forget10's own answers (its training data; what an operator holds) against the same
   unseen authors. Evaluation uses that alpha. The greedy check is reported there too
   (nothing is chosen from it).
Probabilities use the anchored scoring (kernels/README.md). Every stage is cached in the workdir.
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from compare_methods import UTILITY_FLOOR, VALIDATION, validation_pairs  # noqa: E402
from mini_workdir import EVALS, FORGET_SETS, GENERAL_QA, TUNE, calibrated, default_workdir, eval_logs, evaluated  # noqa: E402
from tofu_e2e import PROTOCOLS, flags, uld  # noqa: E402

# candidate training settings -> the FORGET_SETS label of the forget10 assistant trained with them
TRAINING = {"paper": {"lr": 1e-3, "retain_weight": 6.5}, "fast": {"lr": 5e-3, "retain_weight": 1.0},
            "fast-k15": {"lr": 5e-3, "retain_weight": 1.0, "layers": 15},
            "fast-k15-general": {"lr": 5e-3, "retain_weight": 1.0, "layers": 15},
            # the reference code's recipe (train-assistant --recipe reference), at the fast lr
            "reference": {"lr": 5e-3, "recipe": "reference"},
            "reference-general": {"lr": 5e-3, "recipe": "reference"}}
GENERAL = {"fast-k15-general", "reference-general"}  # these add general_qa.py's train.jsonl to their retain data
FINAL = {"paper": "tuned with the paper's settings", "fast": "tuned", "fast-k15": "tuned at K=15",
         "fast-k15-general": "tuned at K=15, general retain data", "reference": "tuned, reference recipe",
         "reference-general": "tuned, reference recipe, general retain data"}
GREEDY_FLOOR = 0.95  # ROUGE-L recall of the target's own greedy answers on held-out general questions
BUDGET = {"epochs": 5, "batch_size": 8, "precision": "auto"}
SMOKE = {"max_steps": 2, "precision": "fp32"}
EVAL_SMOKE = ["--limit", "4", "--max-new-tokens", "8"]


def unseen_level(target, limit=None) -> float:
    """The target's mean answer probability on authors it never learned."""
    from uld_serve.eval.scoring import mean_answer_probability
    from uld_serve.reference import UldModel
    from uld_serve.core.tofu import load_qa

    pairs = [(qa.question, qa.answer) for qa in load_qa(PROTOCOLS["mini"]["unseen"])][:limit]
    return mean_answer_probability(UldModel(target), pairs)


def validate(target, artifact, level, limit=None) -> dict:
    """Step 1 for one candidate: its calibrated alpha on the validation split and the answer
    probabilities there (validation forget, real authors + world facts; alpha 0 is the target)."""
    from uld_serve.core.errors import UldError
    from uld_serve.eval.alpha_curve import AlphaCurve
    from uld_serve.eval.calibrate import first_crossing
    from uld_serve.reference import UldModel

    model = UldModel(target, {"a": artifact})
    pairs = validation_pairs(limit)
    forget, utility = AlphaCurve(model, "a", pairs["forget"]), AlphaCurve(model, "a", pairs["utility"])
    try:
        alpha = first_crossing(forget.mean_probability, level)
    except UldError:
        alpha = None  # never reaches the level: not a candidate
    at = alpha if alpha is not None else 0.0
    return {"alpha": alpha, "forget_prob": forget.mean_probability(at), "utility_prob": utility.mean_probability(at),
            "target_forget_prob": forget.mean_probability(0.0), "target_utility_prob": utility.mean_probability(0.0)}


def greedy_agreement(target, artifact, alpha, heldout: Path, limit=None) -> float:
    """Mean ROUGE-L recall of the served greedy answers (vLLM engine, fp32) against the
    target's own answers to held-out general questions; 1 at alpha 0."""
    from uld_serve.engine.llm import UldEngine
    from uld_serve.eval.metrics import mean_rouge_l_recall
    from uld_serve.eval.scoring import greedy_answers
    from uld_serve.core.tofu import load_qa

    pairs = load_qa(f"jsonl:{heldout}")[:limit]
    engine = UldEngine(target, {"a": artifact}, dtype="float32")
    try:
        answers = greedy_answers(engine, [qa.question for qa in pairs], "a", alpha, max_new_tokens=200)
    finally:
        engine.close()
    return mean_rouge_l_recall([qa.answer for qa in pairs], answers)


def choose(results: dict) -> dict:
    """The candidate with the best utility at its calibrated alpha among those above both floors;
    if none is, the one with the best greedy agreement."""
    reached = {name: r for name, r in results.items() if r["alpha"] is not None}
    if not reached:
        sys.exit("error: no candidate assistant brings the validation forget answers down to the unseen level")
    floor = UTILITY_FLOOR * next(iter(reached.values()))["target_utility_prob"]
    passes = {name: r["utility_prob"] >= floor and r["greedy_rouge"] >= GREEDY_FLOOR for name, r in reached.items()}
    kept = {name: r for name, r in reached.items() if passes[name]}
    name = max(kept, key=lambda n: kept[n]["utility_prob"]) if kept else max(reached, key=lambda n: reached[n]["greedy_rouge"])
    return {"training": name, "validation_alpha": reached[name]["alpha"], "utility_floor": floor,
            "greedy_floor": GREEDY_FLOOR, "above_floor": passes[name], "final": FORGET_SETS[FINAL[name]]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="2 training steps, 4 items per split; reports nothing")
    args = parser.parse_args()
    work = args.workdir or default_workdir()
    target, retain_logs = work / "target", eval_logs(work, "retain reference")
    if not (target.exists() and retain_logs.exists()):
        sys.exit("error: run benchmarks/tofu_e2e.py first (it trains the target and evaluates the retain reference)")
    budget = {**BUDGET, **(SMOKE if args.smoke else {})}
    limit = 4 if args.smoke else None
    tune = work / (f"{TUNE}-smoke" if args.smoke else TUNE)  # a smoke run touches no real result
    level = cached(tune / "unseen.json", lambda: {"unseen": PROTOCOLS["mini"]["unseen"], "prob": unseen_level(target, limit)})["prob"]
    general = work / GENERAL_QA
    if not (general / "heldout.jsonl").exists():
        sys.exit("error: run benchmarks/general_qa.py first (general questions for retain data and the greedy check)")

    def retain(base, name):
        return f"{base}+jsonl:{general / 'train.jsonl'}" if name in GENERAL else base

    results = {}
    for name, settings in TRAINING.items():
        artifact = tune / name / "artifact"
        if not artifact.exists():
            uld("train-assistant", "--target", target, "--forget", VALIDATION["forget"], "--retain", retain(VALIDATION["retain"], name),
                "--out", artifact, *flags(settings), *flags(budget))
        results[name] = cached(tune / name / "validation.json", lambda: validate(target, artifact, level, limit))
        if "greedy_rouge" not in results[name]:
            at = results[name]["alpha"] or 0.0
            results[name]["greedy_rouge"] = greedy_agreement(target, artifact, at, general / "heldout.jsonl", limit)
            (tune / name / "validation.json").write_text(json.dumps(results[name], indent=2))
    choice = choose(results)
    final = tune / "final" if args.smoke else work / choice["final"]
    if not final.exists():
        uld("train-assistant", "--target", target, "--forget", "tofu:forget10",
            "--retain", retain(PROTOCOLS["mini"]["assistant_retain"], choice["training"]),
            "--out", final, "--alpha", choice["validation_alpha"], *flags(TRAINING[choice["training"]]), *flags(budget))
    manifest = json.loads((final / "uld.json").read_text())
    if manifest.get("calibration", {}).get("unseen") != PROTOCOLS["mini"]["unseen"]:
        uld("calibrate-alpha", "--target", target, "--forget-set", final, "--unseen", PROTOCOLS["mini"]["unseen"], "--write")
        manifest = json.loads((final / "uld.json").read_text())
    choice["calibration"] = manifest["calibration"]
    check = tune / f"{final.name}-greedy.json"
    if not check.exists() or json.loads(check.read_text())["alpha"] != manifest["alpha"]:
        check.write_text(json.dumps({"alpha": manifest["alpha"], "rouge": greedy_agreement(
            target, final, manifest["alpha"], general / "heldout.jsonl", limit)}))
    choice["final_greedy_rouge"] = json.loads(check.read_text())["rouge"]
    (tune / "choice.json").write_text(json.dumps(choice, indent=2))
    print(json.dumps(choice, indent=2))
    logs = tune / "eval" / "TOFU_EVAL.json" if args.smoke else eval_logs(work, calibrated(FINAL[choice["training"]]))
    evaluated_with = logs.parent / "forget_set.json"
    this_run = {"forget_set": choice["final"], "alpha": manifest["alpha"]}
    if not (logs.exists() and evaluated_with.exists() and json.loads(evaluated_with.read_text()) == this_run):
        uld("eval", "tofu", "--target", target, "--forget-set", f"forget10={final}", "--out", logs.parent, "--retain-logs", retain_logs,
            "--generate-with", "vllm", "--scoring", "anchored", *(EVAL_SMOKE if args.smoke else []))
        evaluated_with.write_text(json.dumps(this_run))
    if not args.smoke:
        record(work, level, results, choice)


def cached(path: Path, compute) -> dict:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(compute(), indent=2))
    return json.loads(path.read_text())


def record(work, level, results, choice):
    from report import write_section
    from uld_serve.eval.summary import recompute
    from uld_serve.eval.tofu_eval import load_logs

    out = REPO / "benchmarks" / "results" / "tune-assistant-mini"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"training": TRAINING, "budget": BUDGET, "validation": VALIDATION,
                                                 "unseen": PROTOCOLS["mini"]["unseen"], "utility_floor": UTILITY_FLOOR,
                                                 "greedy_floor": GREEDY_FLOOR, "general_retain": sorted(GENERAL),
                                                 "scoring": "anchored", "seed": 0}, indent=2) + "\n")
    (out / "validation.json").write_text(json.dumps({"unseen_prob": level, "candidates": results, "choice": choice}, indent=2) + "\n")
    lines = ["| training | calibrated alpha | validation forget prob | real authors + world facts prob | "
             "general greedy ROUGE-L | chosen |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        alpha = "not reached" if r["alpha"] is None else f"{r['alpha']:g}"
        extra = " + general retain data" if name in GENERAL else ""
        lines.append(f"| {name} {TRAINING[name]}{extra} | {alpha} | {r['forget_prob']:.4f} | {r['utility_prob']:.6f} | "
                     f"{r['greedy_rouge']:.3f} | {'yes' if name == choice['training'] else ''} |")
    calibration = choice["calibration"]
    reference = load_logs(eval_logs(work, "retain reference"))
    table = ["| model | forget quality | model utility | forget ROUGE-L | forget Q_A_Prob | retain Q_A_Prob | privleak |",
             "|---|---|---|---|---|---|---|"]
    for label, logs in evaluated(work, [label for label in EVALS if label != "retain reference"]).items():
        s = recompute(load_logs(logs), reference)
        table.append(f"| {label} | {s['forget_quality']:.3g} | {s['model_utility']:.4f} | {s['forget_Q_A_ROUGE']:.4f} | "
                     f"{s['forget_Q_A_Prob']:.4f} | {s['retain_Q_A_Prob']:.4f} | {s['privleak']:.2f} |")
    write_section("tune-assistant:mini", "Tuning the ULD assistant on a validation split (tofu-mini)",
                  "python benchmarks/tune_assistant.py",
                  f"Budget {BUDGET}, seed 0. The target's mean answer probability on authors it never learned "
                  f"({PROTOCOLS['mini']['unseen']}): {level:.4f}. Validation candidates at their calibrated alpha "
                  f"(anchored scoring; utility floor {choice['utility_floor']:.6f}):\n\n" + "\n".join(lines) +
                  f"\n\nThe forget10 assistant ({choice['final']}) calibrated on forget10's own answers: alpha "
                  f"{calibration['alpha']:g} (forget answer probability {calibration['forget_prob_at_0']:.4f} -> "
                  f"{calibration['forget_prob']:.4f}; unseen level {calibration['unseen_prob']:.4f}); its greedy "
                  f"answers to the held-out general questions keep ROUGE-L {choice['final_greedy_rouge']:.3f} of the "
                  "target's (reported, not used). forget10, "
                  "every ULD evaluation in the workdir (rows other than the calibrated one use the alpha in their "
                  "manifest at the time, BENCHMARKS.md text):\n\n" + "\n".join(table))


if __name__ == "__main__":
    main()
