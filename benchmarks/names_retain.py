"""Do questions about people in the ULD assistant's retain data keep names through the subtraction?

At its calibrated alpha the tuned forget10 assistant (tune_assistant.py's choice: K 15, lr 5e-3,
general retain data) turns names into runs of capital-letter tokens, in forgotten and in
real-author answers alike (BENCHMARKS.md, "Reading the rerun"). The guess tested here: its retain
data (the retained authors, and general:train, which names few people) never shows it names it
should know nothing about, so it learns that a name follows a question about a person, and
subtracting it pushes every name down. One thing changes: the retain data gains questions about
people outside literature (general_qa.py --openers names: written by the embedded model, answered
by the target; no opener asks who wrote what, which TOFU's real-authors split asks).

1. The forget10 assistant is retrained with the chosen recipe, budget and seed, its retain data
   plus the names train split, and calibrated as the tuned one was (`uld calibrate-alpha` on
   forget10's own answers against the unseen authors).
2. Both assistants, on the target's own answers (no test item): how far from uniform each is on
   held-out names answers and on held-out general answers (teacher-forced uniform CE - log V;
   0 = knows nothing there), and at each one's calibrated alpha the agreement (ROUGE-L recall) of
   the served greedy answers with the target's, on the general questions and the held-out names
   questions.
3. forget10 at the new assistant's calibrated alpha (`uld eval tofu`, anchored scoring), beside
   the tuned assistant's calibrated row: the two differ in the retain data only.

    python benchmarks/names_retain.py          # after tune_assistant.py
    python benchmarks/names_retain.py --smoke  # 2 training steps, 4 items: checks the script
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from mini_workdir import FORGET_SETS, TUNE, TUNED, calibrated, default_workdir, eval_logs, forget10_summaries  # noqa: E402
from tofu_e2e import PROTOCOLS, flags, uld  # noqa: E402
from tune_assistant import (BUDGET, CANDIDATES, SMOKE, cached, calibration,  # noqa: E402
                            engine_on_demand, evaluate_forget10, general_questions, greedy_agreement, prepare_qa)

from uld_serve.core.atomic import write_json_atomic  # noqa: E402

NEW = "tuned at K=15, general + names retain data"  # the FORGET_SETS label this script trains


def measures(target, artifact: Path, alpha: float, names: list, general_cache: Path, names_cache: Path, limit=None) -> dict:
    from assistant_recipes import per_answer

    from uld_serve.core.tofu import load_qa
    from uld_serve.reference import UldModel

    model = UldModel(target, {"a": artifact})
    general = [(qa.question, qa.answer) for qa in load_qa("general:heldout")][:limit]
    result = {"alpha": alpha,
              "names_uniform_excess": float(per_answer(model, names, "a")[1].mean()),
              "general_uniform_excess": float(per_answer(model, general, "a")[1].mean())}
    del model
    with engine_on_demand(target, artifact) as engine:
        result["general_agreement"] = greedy_agreement(engine(), alpha, general_cache, general_questions(limit))
        result["names_agreement"] = greedy_agreement(engine(), alpha, names_cache, [q for q, _ in names])
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="2 training steps, 4 items per split; reports nothing")
    args = parser.parse_args()
    work = args.workdir or default_workdir()
    target, tune = work / "target", work / TUNE
    retain_logs = eval_logs(work, "retain reference")
    choice_file = tune / "choice.json"
    if not (choice_file.exists() and retain_logs.exists()):
        sys.exit("error: run benchmarks/tune_assistant.py first (its choice and forget10 assistant are the baseline here)")
    choice = json.loads(choice_file.read_text())
    if CANDIDATES[choice["training"]]["retain"] != ("general",):
        sys.exit(f"error: the chosen recipe {choice['training']!r} has no general retain data, or has more than that already; "
                 "this script adds names to general retain data")
    old = work / choice["final"]
    scratch = work / "names-retain-smoke" if args.smoke else work / "names-retain"  # a smoke run touches no real result
    limit = 4 if args.smoke else None
    names_qa = prepare_qa(work, "names", scratch if args.smoke else None)
    names = [(p["question"], p["answer"]) for p in map(json.loads, (names_qa / "heldout.jsonl").read_text().splitlines())][:limit]

    new = scratch / "final" if args.smoke else work / FORGET_SETS[NEW]
    if not new.exists():
        retain = f"{PROTOCOLS['mini']['assistant_retain']}+general:train+jsonl:{names_qa / 'train.jsonl'}"
        budget = {**BUDGET, **(SMOKE if args.smoke else {})}
        uld("train-assistant", "--target", target, "--forget", "tofu:forget10", "--retain", retain, "--out", new,
            "--alpha", choice["validation_alpha"], *flags(CANDIDATES[choice["training"]]["training"]), *flags(budget))
    # the target's greedy answers to the general questions: shared with tune_assistant.py (same questions)
    general_cache = (scratch if args.smoke else tune) / "target-general.json"
    rows = {}
    for label, artifact in ((TUNED[choice["training"]], old), (NEW, new)):
        alpha = calibration(target, artifact)["alpha"]
        rows[label] = cached(scratch / f"{artifact.name}-measures.json",
                             lambda: measures(target, artifact, alpha, names, general_cache, scratch / "target-names.json", limit))
    print(json.dumps(rows, indent=2))

    evaluate_forget10(work, scratch if args.smoke else None, new, calibrated(NEW), rows[NEW]["alpha"])
    if not args.smoke:
        record(work, names_qa, choice, rows)


def record(work: Path, names_qa: Path, choice: dict, rows: dict):
    from report import invocation, write_section

    out = REPO / "benchmarks" / "results" / "names-retain-mini"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", {"training": CANDIDATES[choice["training"]]["training"], "budget": BUDGET,
                                            "validation_alpha": choice["validation_alpha"],
                                            "names_qa": json.loads((names_qa / "config.json").read_text()),
                                            "retain": f"{PROTOCOLS['mini']['assistant_retain']}+general:train+names train",
                                            "unseen": PROTOCOLS["mini"]["unseen"], "scoring": "anchored", "seed": 0})
    measured = ["| assistant | calibrated alpha | names answers: uniform CE - log V | general answers: uniform CE - log V | "
                "general greedy ROUGE-L | names greedy ROUGE-L |", "|---|---|---|---|---|---|"]
    table = ["| forget10 row | forget quality | first 300 | model utility | forget ROUGE-L | real authors ROUGE-L | "
             "world facts ROUGE-L | retain ROUGE-L | privleak |", "|---|---|---|---|---|---|---|---|---|"]
    for label, m in rows.items():
        measured.append(f"| {label} | {m['alpha']:g} | {m['names_uniform_excess']:.3f} | {m['general_uniform_excess']:.3f} | "
                        f"{m['general_agreement']:.3f} | {m['names_agreement']:.3f} |")
    summaries = forget10_summaries(work, ["target", *(calibrated(label) for label in rows)])
    for label, summary in summaries.items():
        s, first = summary["all"], summary["first_300"]
        table.append(f"| {label} | {s['forget_quality']:.3g} | {first['forget_quality']:.3g} | {s['model_utility']:.4f} | "
                     f"{s['forget_Q_A_ROUGE']:.4f} | {s['ra_Q_A_ROUGE']:.4f} | {s['wf_Q_A_ROUGE']:.4f} | "
                     f"{s['retain_Q_A_ROUGE']:.4f} | {s['privleak']:.2f} |")
    write_json_atomic(out / "measures.json", rows)
    write_json_atomic(out / "forget10.json", summaries)
    config = json.loads((names_qa / "config.json").read_text())
    write_section("names-retain:mini", "Questions about people in the assistant's retain data (tofu-mini)", invocation(),
                  f"The tuned forget10 assistant ({choice['final']}) against the same recipe retrained with "
                  f"{config['train']} questions about people (general_qa.py --openers names, answered by the target) "
                  f"added to its retain data; each at its own calibrated alpha. Teacher-forced on "
                  f"{config['heldout']} held-out names answers and on general:heldout, and served greedy answers "
                  "against the target's:\n\n" + "\n".join(measured) +
                  "\n\nforget10 (anchored scoring; first 300: `uld eval summarize --limit 300`):\n\n" + "\n".join(table))


if __name__ == "__main__":
    main()
