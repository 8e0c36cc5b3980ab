"""Choose the ULD assistant's settings on a validation split, then train and evaluate the
tofu-mini forget10 assistant with them.

    python benchmarks/tune_assistant.py          # after tofu_e2e.py (target, retain reference)
    python benchmarks/tune_assistant.py --smoke  # 2 steps, 4 items per split: checks the script

Validation split and rule are compare_methods.py's: each candidate assistant learns to
remember authors 10-19 of the target's 20 retained authors (tofu:full[200:400]) and to know
nothing of authors 0-9 (tofu:full[:200]); among the candidates whose mean answer
probability on real authors + world facts stays >= 95% of the target's, the one with the
lowest mean probability on the validation forget answers wins. Candidates: the training
settings below x alpha (alpha needs no retraining: one forward of each model per batch
serves every alpha). Probabilities use the anchored scoring (kernels/README.md). forget10,
the test split, is not looked at before the choice. Every stage is cached in the workdir.
"""
import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from compare_methods import UTILITY_FLOOR, VALIDATION, validation_pairs  # noqa: E402
from mini_workdir import FORGET_SETS, EVALS, default_workdir, eval_logs, evaluated  # noqa: E402
from tofu_e2e import PROTOCOLS, flags, uld  # noqa: E402

TRAINING = {"paper": {"lr": 1e-3, "retain_weight": 6.5}, "fast": {"lr": 5e-3, "retain_weight": 1.0}}
ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]  # 0.0 is the target itself: the utility floor's base
BUDGET = {"epochs": 5, "batch_size": 8, "precision": "bf16"}
SMOKE = {"max_steps": 2, "precision": "fp32"}
EVAL_SMOKE = ["--limit", "4", "--max-new-tokens", "8"]


def answer_losses(model, name, pairs, variants, progress=None) -> dict:
    """{(scoring, alpha): per-pair mean answer-token loss} of target + forget set `name`, for
    each (`uld eval tofu --scoring` value, alpha) of `variants`, from one forward of each model."""
    import torch

    from uld_kernels import logit_difference
    from uld_serve.eval.scoring import answer_batches
    from uld_serve.eval.tofu_eval import SCORING_MODES

    relative_top = model.forget_sets[name].settings()[1]
    losses = {variant: [None] * len(pairs) for variant in variants}
    for chunk, ids, mask, positions, tokens, counts in answer_batches(model.tokenizer, pairs):
        t, a = model.score_parts(ids, mask, name, positions)
        for scoring, alpha in variants:
            logits = logit_difference(t, a, alpha, relative_top, mode=SCORING_MODES[scoring])
            token_lp = torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
            for i, lp in zip(chunk, token_lp.split(counts)):
                losses[(scoring, alpha)][i] = float(-lp.mean())
        if progress is not None:
            progress(len(chunk))
    return losses


def alpha_sweep(target, artifact, limit=None) -> dict:
    """{alpha: {"forget_prob", "utility_prob"}}: mean answer probabilities of target + assistant."""
    from uld_serve.reference import UldModel

    model = UldModel(target, {"a": artifact})
    variants = [("anchored", alpha) for alpha in ALPHAS]
    means = {}
    for name, pairs in validation_pairs(limit).items():
        losses = answer_losses(model, "a", pairs, variants)
        means[name] = {alpha: sum(math.exp(-x) for x in losses[("anchored", alpha)]) / len(pairs) for alpha in ALPHAS}
    return {alpha: {"forget_prob": means["forget"][alpha], "utility_prob": means["utility"][alpha]} for alpha in ALPHAS}


def choose(sweeps: dict) -> dict:
    """compare_methods.py's rule over every (training setting, alpha > 0)."""
    target = next(iter(sweeps.values()))[0.0]
    floor = UTILITY_FLOOR * target["utility_prob"]
    candidates = [(name, alpha, s) for name, sweep in sweeps.items() for alpha, s in sweep.items() if alpha > 0]
    kept = [c for c in candidates if c[2]["utility_prob"] >= floor]
    name, alpha, scores = (min(kept, key=lambda c: c[2]["forget_prob"]) if kept
                           else max(candidates, key=lambda c: c[2]["utility_prob"]))
    return {"training": name, "alpha": alpha, "scores": scores, "target": target, "utility_floor": floor}


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
    tune = work / "tune-assistant"
    sweeps = {}
    for name, settings in TRAINING.items():
        artifact, sweep_path = tune / name / "artifact", tune / name / "sweep.json"
        if not artifact.exists():
            uld("train-assistant", "--target", target, "--forget", VALIDATION["forget"], "--retain", VALIDATION["retain"],
                "--out", artifact, *flags(settings), *flags(budget))
        if not sweep_path.exists():
            sweep_path.write_text(json.dumps(alpha_sweep(target, artifact, limit), indent=2))
        sweeps[name] = {float(a): s for a, s in json.loads(sweep_path.read_text()).items()}
    choice = choose(sweeps)
    (tune / "choice.json").write_text(json.dumps(choice, indent=2))
    print(json.dumps(choice, indent=2))
    final = work / FORGET_SETS["tuned"]
    if not final.exists():
        uld("train-assistant", "--target", target, "--forget", "tofu:forget10", "--retain", PROTOCOLS["mini"]["assistant_retain"],
            "--out", final, "--alpha", choice["alpha"], *flags(TRAINING[choice["training"]]), *flags(budget))
    for scoring in ("anchored", "paper"):
        logs = eval_logs(work, f"ULD, tuned, {scoring} scoring")
        if not logs.exists():
            uld("eval", "tofu", "--target", target, "--forget-set", f"forget10={final}", "--out", logs.parent, "--retain-logs", retain_logs,
                "--generate-with", "vllm", "--scoring", scoring, *(EVAL_SMOKE if args.smoke else []))
    if not args.smoke:
        record(work, sweeps, choice)


def record(work, sweeps, choice):
    from report import write_section
    from uld_serve.eval.summary import recompute
    from uld_serve.eval.tofu_eval import load_logs

    out = REPO / "benchmarks" / "results" / "tune-assistant-mini"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"training": TRAINING, "alphas": ALPHAS, "budget": BUDGET, "validation": VALIDATION,
                                                 "utility_floor": UTILITY_FLOOR, "scoring": "anchored", "seed": 0}, indent=2) + "\n")
    (out / "validation.json").write_text(json.dumps({"sweeps": sweeps, "choice": choice}, indent=2) + "\n")
    lines = ["| training | alpha | validation forget prob | real authors + world facts prob | chosen |", "|---|---|---|---|---|"]
    for name, sweep in sweeps.items():
        for alpha, s in sweep.items():
            mark = "yes" if (name, alpha) == (choice["training"], choice["alpha"]) else ""
            lines.append(f"| {name} {TRAINING[name]} | {alpha:g} | {s['forget_prob']:.4f} | {s['utility_prob']:.4f} | {mark} |")
    reference = load_logs(eval_logs(work, "retain reference"))
    table = ["| model | forget quality | model utility | forget ROUGE-L | forget Q_A_Prob | retain Q_A_Prob | privleak |",
             "|---|---|---|---|---|---|---|"]
    for label, logs in evaluated(work, [label for label in EVALS if label != "retain reference"]).items():
        s = recompute(load_logs(logs), reference)
        table.append(f"| {label} | {s['forget_quality']:.3g} | {s['model_utility']:.4f} | {s['forget_Q_A_ROUGE']:.4f} | "
                     f"{s['forget_Q_A_Prob']:.4f} | {s['retain_Q_A_Prob']:.4f} | {s['privleak']:.2f} |")
    write_section("tune-assistant:mini", "Tuning the ULD assistant on a validation split (tofu-mini)",
                  "python benchmarks/tune_assistant.py",
                  f"Budget {BUDGET}, seed 0. Validation candidates (anchored scoring; alpha 0 is the target; "
                  f"utility floor {choice['utility_floor']:.4f}):\n\n" + "\n".join(lines) +
                  "\n\nforget10 with the chosen settings, against the paper-settings assistant (10 epochs) of the "
                  "end-to-end section:\n\n" + "\n".join(table))


if __name__ == "__main__":
    main()
