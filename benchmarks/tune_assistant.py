"""Choose the ULD assistant's settings on a validation split, then train the tofu-mini forget10
assistant with them, choose its alpha, and evaluate it.

    python benchmarks/tune_assistant.py          # after tofu_e2e.py --until eval_target
    python benchmarks/tune_assistant.py --candidates fast-k15-general,reference-general
    python benchmarks/tune_assistant.py --smoke  # 2 steps, 4 items per split: checks the script
    python benchmarks/tune_assistant.py --section amx   # its own BENCHMARKS section (another machine's target)
    python benchmarks/tune_assistant.py --validate-only # the candidates and the choice, no forget10 assistant
    python benchmarks/tune_assistant.py --unaugmented   # forget10's assistant without augmentation, as on validation
    python benchmarks/tune_assistant.py --unaugmented --seed 1  # the same forget10 assistant trained with seed 1
    python benchmarks/tune_assistant.py --epochs 10     # augmented at half a 20-epoch choice's epochs: the same steps

The validation split mirrors forget10 inside the target's own data and reads no test question:
each candidate assistant learns to remember authors 10-19 of the 20 the target retains
(tofu:full[200:400]) and to know nothing of authors 0-9 (tofu:full[:200], plus general:train
where marked, plus model-written questions answered by the target where marked: general_qa.py
--openers names, about people outside literature, --openers varied, and --openers authors, about
real writers but apart from TOFU's real-authors test split). ULD's augmentation
(paraphrased questions and answers, wrong answers: tofu_aug) covers TOFU's forget splits only, so
the candidates train without it and forget10's assistant with it (twice the steps per epoch, its
wrong answers in the retain data), unless --unaugmented puts both on the same footing. A
validation retain model, fine-tuned as the target was on its data less those ten authors
(tofu:full[:200]+tofu:forget10), plays the retain model: TOFU's retain_perturbed holds
paraphrased and wrong answers for exactly those 200 questions, so a validation forget quality
(the KS p-value of truth ratios, as `uld eval tofu` computes forget quality) can be read at
every alpha.

The rule (nothing in it reads forget10's evaluation or the retain reference):
1. Per candidate, on the validation split: validation forget quality along alpha (anchored
   scoring, as the evaluation below; grid of 0.05 up to 2), and its alpha: around the grid's
   highest (ties to the smallest), the run of alphas, walked in steps of 0.005, where validation
   forget quality stays at or above FQ_AIM, and the middle of that run (the grid's highest if it
   never reaches FQ_AIM). The peak is a few grid steps wide, and step 3 carries this alpha over
   to forget10 as a multiple of another measurement, which is off by some percent either way:
   the alpha farthest from losing the aim on both sides is the safer one to carry over than the
   highest point, which can lie anywhere in the run. At that alpha, the answer probability on
   real authors + world facts and the agreement (ROUGE-L recall) of the served greedy answers
   with the target's own on held-out general questions (general:heldout plus simple facts), and
   the share of famous people the target names right that the served greedy answers still name
   (famous_names.py: hand-written questions apart from TOFU's real-authors split; model utility's
   greedy answers hang on such names, which the general questions hardly ask). Recorded as
   well, to compare recipes: the assistant's own forget CE and its uniform CE excess on the
   validation retain answers and on the general answers, and the probability-calibrated alpha
   (`uld calibrate-alpha`'s rule: the forget answers no more likely than answers about authors
   the target never learned, tofu:full[400:600]).
2. Candidates whose validation forget quality reaches FQ_AIM (the issue's aim) compete; among
   them those whose utility probability keeps UTILITY_FLOOR of the target's are preferred, and
   the best greedy agreement (the mean of the general ROUGE-L and the famous names kept) wins.
   If none reaches FQ_AIM, the highest forget quality wins.
3. The forget10 assistant is trained with those settings. Its alpha: `uld calibrate-alpha` on
   forget10's own answers (what an operator holds) against the same unseen authors, times the
   chosen candidate's validation ratio of step 1's alpha to calibrated alpha (the
   calibration measures how strongly this assistant acts on its forget set; validation says
   where forget quality peaks relative to it). forget10 is evaluated at that alpha, and at the
   calibrated alpha alone, to show what the ratio's transfer from validation does.
Every stage is cached in the workdir, so an interrupted run resumes.
"""
import argparse
import contextlib
import functools
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from compare_methods import UTILITY_FLOOR, VALIDATION, validation_pairs  # noqa: E402
from famous_names import TARGET_ANSWERS as FAMOUS_TARGET, kept as famous_kept, write_retain  # noqa: E402
from general_qa import target_answers as cached_answers  # noqa: E402
from mini_workdir import (EPOCHS, EVALS, FORGET_SETS, QA_FOLDERS, SEEDS, TUNE, TUNED, cached, calibrated,  # noqa: E402
                          choice_file, choices, default_workdir, eval_logs, forget10_summaries, transferred, variant_label)
from tofu_e2e import FINETUNE, PROTOCOLS, flags, uld  # noqa: E402

from uld_serve.core.atomic import write_json_atomic  # noqa: E402

K15 = {"lr": 5e-3, "retain_weight": 1.0, "layers": 15}  # fast-k15's settings, the base of the later candidates
POSITIONS = {**K15, "retain_positions": "prompt+answer"}  # the retain term over prompt and answer positions
GENERAL, NAMES = ("general",), ("general", "names")
# candidate -> its train-assistant settings (its epochs override BUDGET's) and the retain data it
# adds to its split's own: "general" is general:train; "names", "varied" and "authors" are general_qa.py's
# opener sets answered by the target (prepare_qa); "famous" is famous_names.py's training questions,
# answered by the target. The label and folder of the forget10 assistant
# trained with each: mini_workdir.TUNED.
CANDIDATES = {
    "paper": {"training": {"lr": 1e-3, "retain_weight": 6.5}, "retain": ()},
    "fast": {"training": {"lr": 5e-3, "retain_weight": 1.0}, "retain": ()},
    "fast-k15": {"training": K15, "retain": ()},
    "fast-k15-general": {"training": K15, "retain": GENERAL},
    # the reference code's recipe (train-assistant --recipe reference), at the fast lr
    "reference": {"training": {"lr": 5e-3, "recipe": "reference"}, "retain": ()},
    "reference-general": {"training": {"lr": 5e-3, "recipe": "reference"}, "retain": GENERAL},
    # questions about people outside literature made the forget10 assistant flatter off its forget
    # set (BENCHMARKS.md, names-retain); varied ones test whether more and more varied text does more
    "fast-k15-general-names": {"training": K15, "retain": NAMES},
    "fast-k15-general-varied": {"training": K15, "retain": (*NAMES, "varied")},
    # fast-k15-general with one of the reference code's differences each (issue 32's list): the
    # retain term over prompt and answer positions; its LoRA. Not its augmentation: ULD's
    # paraphrases and wrong answers (tofu_aug) exist for TOFU's forget splits only, so no
    # validation candidate is augmented (forget10's assistants are, unless --unaugmented)
    "fast-k15-general-positions": {"training": POSITIONS, "retain": GENERAL},
    "fast-k15-general-lora": {"training": {**K15, "rank": 16, "lora_dropout": 0.05}, "retain": GENERAL},
    # the two levers that each reached validation forget quality 0.47, together
    "fast-k15-general-positions-names": {"training": POSITIONS, "retain": NAMES},
    # twice the budget: on the demo's forget set a sharper forget set needed a smaller alpha and
    # changed fewer general answers (BENCHMARKS.md, sharper-forget)
    "fast-k15-general-positions-e10": {"training": {**POSITIONS, "epochs": 10}, "retain": GENERAL},
    # and with the names data: at 10 epochs forget10's served answers still lose real authors'
    # names (BENCHMARKS.md, the amx tuning section's reading)
    "fast-k15-general-positions-names-e10": {"training": {**POSITIONS, "epochs": 10}, "retain": NAMES},
    # four times the budget, on the chosen 10-epoch recipe: 5 -> 10 epochs brought the calibrated
    # alpha from 0.51 to 0.36 and model utility up; at the rule's alpha a know-nothing assistant
    # still costs 5% of it (BENCHMARKS.md, floor-utility), so a sharper forget set (a smaller
    # alpha) is the way on
    "fast-k15-general-positions-names-e20": {"training": {**POSITIONS, "epochs": 20}, "retain": NAMES},
    # and questions about real writers: at 20 epochs forget10's utility sits 0.04x under the
    # know-nothing floor's, all in real authors' greedy answers (BENCHMARKS.md, floor-utility);
    # general_qa.py keeps these pairs apart from the real-authors test split
    "fast-k15-general-positions-names-authors-e20": {"training": {**POSITIONS, "epochs": 20}, "retain": (*NAMES, "authors")},
    # and hand-written questions about famous people: the authors data (model-written, mostly about
    # people who do not exist) left the famous-names check where it was (BENCHMARKS.md, the avx2
    # tuning section); these name real people, none of those the check asks about
    "fast-k15-general-positions-names-famous-e20": {"training": {**POSITIONS, "epochs": 20}, "retain": (*NAMES, "famous")}}
if set(CANDIDATES) != set(TUNED):
    raise SystemExit(f"error: candidates without a forget10 label in mini_workdir.TUNED (or the reverse): "
                     f"{', '.join(sorted(set(CANDIDATES) ^ set(TUNED)))}")
VALIDATION_RETAIN = "tofu:full[:200]+tofu:forget10"  # the target's data less the validation forget authors
TRUTH_RATIO_ROWS = slice(200, 400)  # retain_perturbed[i] asks full[i]'s question: the validation forget items
FQ_AIM = 0.1
FQ_ALPHAS = [round(0.05 * i, 2) for i in range(41)]  # 0 .. 2
FQ_FINE_STEP = 0.005  # the run of validation forget quality >= FQ_AIM is walked on this step
ALPHA_RULE = "middle of the run >= FQ_AIM"  # cached validation results of another rule are recomputed
BUDGET = {"epochs": 5, "batch_size": 8, "precision": PROTOCOLS["mini"]["precision"]}
SMOKE = {"max_steps": 2, "precision": "fp32"}
EVAL_SMOKE = ["--limit", "4", "--max-new-tokens", "8"]
AGREEMENT_ALPHAS = [0.5, 0.65, 0.8, 1.0]  # the forget10 assistant's general greedy agreement, recorded along these
# general_qa.py's sizes per opener set (sample: questions drawn; a third or more are dropped as
# unusable, most often answers cut at the token limit)
QA_SIZES = {"names": {"train": 400, "heldout": 80}, "varied": {"train": 1200, "heldout": 100, "sample": 3000},
            "authors": {"train": 400, "heldout": 80, "sample": 2000}}  # many dropped as touching the test split
QA_SMOKE = {"train": 8, "heldout": 4, "sample": 60}


def prepare_qa(work: Path, openers: str, smoke_dir=None) -> Path:
    """The folder of questions from general_qa.py's `openers` set, answered by the target
    (train.jsonl and heldout.jsonl), written on first use; a smoke run writes a few into `smoke_dir`."""
    out = (smoke_dir or work) / QA_FOLDERS[openers]
    if not (out / "heldout.jsonl").exists():
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "general_qa.py"), "--workdir", str(work), "--openers", openers,
                        "--out", str(out), *map(str, flags(QA_SMOKE if smoke_dir else QA_SIZES[openers]))], check=True)
    return out


def unseen_level(target, limit=None) -> float:
    """The target's mean answer probability on authors it never learned."""
    from uld_serve.eval.scoring import mean_answer_probability
    from uld_serve.reference import UldModel
    from uld_serve.core.tofu import load_qa

    pairs = [(qa.question, qa.answer) for qa in load_qa(PROTOCOLS["mini"]["unseen"])][:limit]
    return mean_answer_probability(UldModel(target), pairs)


def truth_ratio_rows(limit=None) -> list:
    """retain_perturbed's rows for the validation forget questions (checked, not assumed, to ask them)."""
    from uld_serve.core.tofu import load_qa, load_split

    rows = load_split("retain_perturbed")[TRUTH_RATIO_ROWS][:limit]
    questions = [qa.question for qa in load_qa(VALIDATION["forget"])][:limit]
    if [r["question"] for r in rows] != questions:
        sys.exit("error: retain_perturbed's rows 200-400 do not ask the validation forget questions")
    return rows


def reference_ratios(validation_retain, limit=None) -> list:
    """The validation retain model's log truth ratios on the validation forget items."""
    from truth_ratio_gaps import log_ratios, pairs_of

    from uld_serve.eval.scoring import score_pairs
    from uld_serve.reference import UldModel

    rows = truth_ratio_rows(limit)
    return log_ratios([r["avg_loss"] for r in score_pairs(UldModel(validation_retain), pairs_of(rows))], len(rows)).tolist()


def validate(target, artifact, level, reference, limit=None) -> dict:
    """Step 1 for one candidate, teacher-forced: validation forget quality along alpha, the
    probability-calibrated alpha, and at the alpha of step 1 the answer probabilities
    (validation forget, real authors + world facts; alpha 0 is the target); the assistant's own
    forget CE and uniform CE excess."""
    from assistant_recipes import per_answer
    from truth_ratio_gaps import log_ratios, pairs_of

    from uld_serve.core.errors import UldError
    from uld_serve.core.tofu import load_qa
    from uld_serve.eval.alpha_curve import AlphaCurve
    from uld_serve.eval.calibrate import first_crossing
    from uld_serve.eval.metrics import ks_pvalue
    from uld_serve.reference import UldModel

    model = UldModel(target, {"a": artifact})
    pairs = validation_pairs(limit)
    forget, utility = AlphaCurve(model, "a", pairs["forget"]), AlphaCurve(model, "a", pairs["utility"])
    try:
        probability_alpha = first_crossing(forget.mean_probability, level)
    except UldError:
        probability_alpha = None  # never reaches the level
    rows = truth_ratio_rows(limit)
    ratios = AlphaCurve(model, "a", pairs_of(rows))

    @functools.cache  # the grid, the walk and the chosen alpha meet at the same points
    def fq_at(a):
        return ks_pvalue(log_ratios(ratios.losses(a), len(rows)), reference)

    fq = {a: fq_at(a) for a in FQ_ALPHAS}
    peak = max(FQ_ALPHAS, key=lambda a: (fq[a], -a))
    alpha, run = middle_of_aim_run(fq_at, peak)
    retain = [(qa.question, qa.answer) for qa in load_qa(VALIDATION["retain"])][:limit]
    general = [(qa.question, qa.answer) for qa in load_qa("general:heldout")][:limit]
    return {"alpha": alpha, "fq": fq_at(alpha), "fq_by_alpha": fq, "peak_alpha": peak, "aim_run": run,
            "alpha_rule": ALPHA_RULE, "probability_alpha": probability_alpha,
            "forget_prob": forget.mean_probability(alpha), "utility_prob": utility.mean_probability(alpha),
            "target_forget_prob": forget.mean_probability(0.0), "target_utility_prob": utility.mean_probability(0.0),
            "forget_ce": float(-per_answer(model, pairs["forget"], "a")[0].mean()),
            "retain_uniform_excess": float(per_answer(model, retain, "a")[1].mean()),
            "general_uniform_excess": float(per_answer(model, general, "a")[1].mean())}


def middle_of_aim_run(fq_at, peak: float) -> tuple:
    """Step 1's alpha: from `peak`, walk FQ_FINE_STEP down and up while fq_at stays >= FQ_AIM
    (within [0, 2]); the middle of that run, on the step, and the run's ends (both `peak` when
    forget quality never reaches the aim there)."""
    if fq_at(peak) < FQ_AIM:
        return peak, [peak, peak]

    def end(direction):
        a = peak
        while 0 <= (step := round(a + direction * FQ_FINE_STEP, 4)) <= FQ_ALPHAS[-1] and fq_at(step) >= FQ_AIM:
            a = step
        return a

    low, high = end(-1), end(1)
    return round(round((low + high) / 2 / FQ_FINE_STEP) * FQ_FINE_STEP, 4), [low, high]


def validation_mia(target, artifact, reference_auc, alpha, limit=None) -> dict:
    """Step 1's privacy side, recorded beside the rule (not part of it): privleak along alpha on
    the validation split, as `uld eval tofu` reads it on forget10 (min-k, k 0.4, of the validation
    forget answers against answers about unseen authors; reference: the validation retain model's
    AUC on the same pairs). 0 where the attack finds the forget set as unseen as a model that
    never learned it does; positive where the forget set looks *less* likely than unseen text.
    Read at the grid's alphas and at the rule's `alpha`."""
    from uld_serve.eval.alpha_curve import AlphaCurve
    from uld_serve.eval.metrics import privleak
    from uld_serve.reference import UldModel

    model = UldModel(target, {"a": artifact})
    forget, unseen = (AlphaCurve(model, "a", pairs) for pairs in mia_pairs(limit))
    auc = {str(a): min_k_auc(forget.token_logprobs(a), unseen.token_logprobs(a))  # keys as JSON's
           for a in sorted({*FQ_ALPHAS, alpha})}
    return {"mia_auc_by_alpha": auc, "privleak_by_alpha": {a: privleak(v, reference_auc) for a, v in auc.items()}}


def reference_mia(validation_retain, limit=None) -> float:
    """The validation retain model's min-k AUC of the validation forget answers against unseen authors'."""
    from uld_serve.eval.scoring import score_pairs
    from uld_serve.reference import UldModel

    model = UldModel(validation_retain)
    forget, unseen = ([r["token_logprobs"] for r in score_pairs(model, pairs)] for pairs in mia_pairs(limit))
    return min_k_auc(forget, unseen)


def mia_pairs(limit=None) -> tuple:
    from uld_serve.core.tofu import load_qa

    unseen = [(qa.question, qa.answer) for qa in load_qa(PROTOCOLS["mini"]["unseen"])][:limit]
    return validation_pairs(limit)["forget"], unseen


def min_k_auc(forget_logprobs, unseen_logprobs) -> float:
    from uld_serve.eval.metrics import mia_auc, min_k_score

    return mia_auc([min_k_score(lp) for lp in forget_logprobs], [min_k_score(lp) for lp in unseen_logprobs])


def general_questions(limit=None) -> list:
    from assistant_recipes import SIMPLE_FACTS

    from uld_serve.core.tofu import load_qa

    return [qa.question for qa in load_qa("general:heldout")][:limit] + SIMPLE_FACTS[:limit]


@contextlib.contextmanager
def engine_on_demand(target, artifact: Path):
    """Yields a function that returns one vLLM engine (fp32) serving `artifact` on `target` as
    forget set "a", started on its first call (what it serves is cached, so a resumed run may
    need none: a start costs about a minute) and closed on leaving."""
    opened = []

    def engine():
        if not opened:
            from uld_serve.engine.llm import UldEngine

            opened.append(UldEngine(target, {"a": artifact}, dtype="float32"))
        return opened[0]

    try:
        yield engine
    finally:
        for e in opened:
            e.close()


def greedy_agreement(engine, alpha, target_answers: Path, questions: list) -> float:
    """Mean ROUGE-L recall of the greedy answers `engine` serves with forget set "a" at `alpha`
    against the target's own greedy answers to `questions` (cached in `target_answers` with the
    questions they answer, recomputed when those change); 1 at alpha 0."""
    from uld_serve.eval.metrics import mean_rouge_l_recall
    from uld_serve.eval.scoring import greedy_answers

    reference = cached_answers(engine, questions, target_answers)
    return mean_rouge_l_recall(reference, greedy_answers(engine, questions, "a", alpha, max_new_tokens=200))


def agreement(r: dict) -> float:
    """Step 2's ranking: how much of the target's greedy answers the served ones keep, general
    questions and famous people's names weighed alike."""
    famous = r["famous_kept"]  # None where the target names nobody asked (a smoke run's few questions)
    return (r["greedy_rouge"] + (famous if famous is not None else 0.0)) / 2


def choose(results: dict, unaugmented: bool = False, seed: int = 0, epochs: int = None) -> dict:
    """Step 2: among the candidates whose validation forget quality reaches FQ_AIM, those above
    the utility floor first, the best greedy agreement (`agreement`); if none reaches it, the best forget quality.
    `final` names the forget10 assistant trained with the choice (without augmentation if `unaugmented`;
    with `seed`; for `epochs` instead of the candidate's own)."""
    floor = UTILITY_FLOOR * next(iter(results.values()))["target_utility_prob"]
    forgets = {name: r for name, r in results.items() if r["fq"] >= FQ_AIM}
    kept = {name: r for name, r in forgets.items() if r["utility_prob"] >= floor}
    pool = kept or forgets
    name = max(pool, key=lambda n: agreement(pool[n])) if pool else max(results, key=lambda n: results[n]["fq"])
    r = results[name]
    ratio = r["alpha"] / r["probability_alpha"] if r["probability_alpha"] else None
    label = variant_label(TUNED[name], unaugmented, seed, epochs)
    return {"training": name, "validation_alpha": r["alpha"], "validation_fq": r["fq"], "alpha_ratio": ratio,
            "utility_floor": floor, "reaches_aim": name in forgets, "above_floor": name in kept,
            "label": label, "augmented": not unaugmented, "seed": seed, "epochs": epochs, "final": FORGET_SETS[label]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help=f"comma-separated, of: {', '.join(CANDIDATES)}")
    parser.add_argument("--smoke", action="store_true", help="2 training steps, 4 items per split; reports nothing")
    parser.add_argument("--validate-only", action="store_true",
                        help="stop after the validation candidates and the choice (records the validation table)")
    parser.add_argument("--unaugmented", action="store_true",
                        help="train forget10's assistant without ULD's augmentation, as the validation candidates train")
    parser.add_argument("--seed", type=int, default=0, choices=(0, *SEEDS),
                        help="forget10's assistant's training seed (the validation candidates and the rule keep seed 0)")
    parser.add_argument("--epochs", type=int, choices=EPOCHS,
                        help="train forget10's assistant this many epochs instead of the chosen candidate's (augmented, "
                        "half a 20-epoch candidate's epochs take the unaugmented run's steps)")
    parser.add_argument("--section", help="BENCHMARKS.md section (and results folder) to write instead of the usual one: "
                        "a run on another target (another kind of CPU) keeps the first run's")
    args = parser.parse_args()
    if args.seed and args.epochs:
        sys.exit("error: --seed and --epochs are not combined (one recipe change per forget10 assistant)")
    names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown or not names:
        sys.exit(f"error: unknown candidate {unknown[0] if unknown else '(none given)'!r}; known: {', '.join(CANDIDATES)}")
    work = args.workdir or default_workdir()
    target, retain_logs = work / "target", eval_logs(work, "retain reference")
    if not (target.exists() and retain_logs.exists()):
        sys.exit("error: run benchmarks/tofu_e2e.py first (it trains the target and evaluates the retain reference)")
    budget = {**BUDGET, **(SMOKE if args.smoke else {})}
    limit = 4 if args.smoke else None
    tune = work / (f"{TUNE}-smoke" if args.smoke else TUNE)  # a smoke run touches no real result
    level = cached(tune / "unseen.json", lambda: {"unseen": PROTOCOLS["mini"]["unseen"], "prob": unseen_level(target, limit)})["prob"]
    validation_retain = tune / "validation-retain"
    if not validation_retain.exists():
        uld("finetune", "--model", "smollm2-135m-instruct", "--data", VALIDATION_RETAIN, "--out", validation_retain,
            *flags({**FINETUNE, "precision": budget["precision"], **(SMOKE if args.smoke else {})}), "--seed", 0)
    reference = cached(tune / "validation-retain-ratios.json",
                       lambda: {"log_ratios": reference_ratios(validation_retain, limit)})["log_ratios"]
    reference_auc = cached(tune / "validation-retain-mia.json", lambda: {"auc": reference_mia(validation_retain, limit)})["auc"]

    def retain_file(data):
        if data == "famous":
            return write_retain(target, (tune if args.smoke else work) / "famous-qa" / "train.jsonl", limit)
        return prepare_qa(work, data, tune if args.smoke else None) / "train.jsonl"

    def retain(base, name):
        return "+".join([base, *("general:train" if data == "general" else f"jsonl:{retain_file(data)}"
                                 for data in CANDIDATES[name]["retain"])])

    results = {}
    for name in names:
        artifact = tune / name / "artifact"
        if not artifact.exists():
            uld("train-assistant", "--target", target, "--forget", VALIDATION["forget"], "--retain", retain(VALIDATION["retain"], name),
                "--out", artifact, *flags({**budget, **CANDIDATES[name]["training"]}))
        results[name] = cached(tune / name / "validation-fq.json", lambda: validate(target, artifact, level, reference, limit),
                               current=lambda r: r.get("alpha_rule") == ALPHA_RULE)  # greedy and privleak redone below
        alpha = results[name]["alpha"]
        with engine_on_demand(target, artifact) as engine:
            if "greedy_rouge" not in results[name]:
                results[name]["greedy_rouge"] = greedy_agreement(engine(), alpha, tune / "target-general.json", general_questions(limit))
                write_json_atomic(tune / name / "validation-fq.json", results[name])
            if "famous_kept" not in results[name]:  # added after the first runs: computed for cached candidates too
                results[name]["famous_kept"] = famous_kept(engine(), "a", [alpha], tune / FAMOUS_TARGET, limit)[f"{alpha:g}"]["kept"]
                write_json_atomic(tune / name / "validation-fq.json", results[name])
        if "privleak_by_alpha" not in results[name]:  # added after the first runs: computed for cached candidates too
            results[name].update(validation_mia(target, artifact, reference_auc, results[name]["alpha"], limit))
            write_json_atomic(tune / name / "validation-fq.json", results[name])
    choice = choose(results, args.unaugmented, args.seed, args.epochs)
    if args.validate_only:
        print(json.dumps(choice, indent=2))
        if not args.smoke:
            record(work, level, reference_auc, results, choice, args.section)
        return
    final = (tune if args.smoke else work) / choice["final"]
    if not final.exists():
        uld("train-assistant", "--target", target, "--forget", "tofu:forget10",
            "--retain", retain(PROTOCOLS["mini"]["assistant_retain"], choice["training"]),
            "--out", final, "--alpha", choice["validation_alpha"],
            *flags({**budget, **CANDIDATES[choice["training"]]["training"], **({"epochs": args.epochs} if args.epochs else {})}),
            *(["--no-augment"] if args.unaugmented else []), "--seed", args.seed)
    choice["calibration"] = calibration(target, final)
    ratio = choice["alpha_ratio"]
    choice["alpha"] = round(choice["calibration"]["alpha"] * ratio, 4) if ratio else choice["validation_alpha"]
    # general greedy agreement (general questions only, no test item) at the rule's alpha and along
    # AGREEMENT_ALPHAS: how fast the served general answers drift on this assistant; one cache by alpha
    curve_path = tune / f"{final.name}-greedy-curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.exists() else {}
    alphas = [choice["alpha"], choice["calibration"]["alpha"]]  # famous names kept, at the rule's alpha and the calibrated one
    with engine_on_demand(target, final) as engine:
        for alpha in [choice["alpha"], *AGREEMENT_ALPHAS]:
            if f"{alpha:g}" not in curve:
                curve[f"{alpha:g}"] = greedy_agreement(engine(), alpha, tune / "target-general.json", general_questions(limit))
                write_json_atomic(curve_path, curve)
        famous = cached(tune / f"{final.name}-famous.json", lambda: famous_kept(engine(), "a", alphas, tune / FAMOUS_TARGET, limit),
                        current=lambda r: all(f"{a:g}" in r for a in alphas))
    choice["final_famous_kept"] = {"rule": famous[f"{choice['alpha']:g}"]["kept"],
                                   "calibrated": famous[f"{choice['calibration']['alpha']:g}"]["kept"]}
    choice["final_greedy_rouge"] = curve[f"{choice['alpha']:g}"]
    choice["final_greedy_curve"] = {f"{alpha:g}": curve[f"{alpha:g}"] for alpha in AGREEMENT_ALPHAS}
    write_json_atomic(tune / choice_file(args.unaugmented, args.seed, args.epochs), choice)
    print(json.dumps(choice, indent=2))
    # the rule's alpha, and (to show what the validation ratio does) the calibrated alpha alone;
    # recorded after each, so a run stopped during the second keeps the first's result
    for label_of, alpha in ((transferred, choice["alpha"]), (calibrated, choice["calibration"]["alpha"])):
        evaluate_forget10(work, tune if args.smoke else None, final, label_of(choice["label"]), alpha)
        if not args.smoke:
            record(work, level, reference_auc, results, choice, args.section)


def evaluate_forget10(work: Path, smoke_dir, artifact: Path, label: str, alpha: float):
    """forget10 served with `artifact` at `alpha` (`uld eval tofu`, anchored scoring), into the
    workdir's folder for `label`, unless its forget_set.json says it was evaluated with exactly
    these. A smoke run (`smoke_dir` set) evaluates 4 items into `smoke_dir`, touching no real result."""
    logs = smoke_dir / EVALS[label] / "TOFU_EVAL.json" if smoke_dir else eval_logs(work, label)
    evaluated_with = logs.parent / "forget_set.json"
    this_run = {"forget_set": artifact.name, "alpha": alpha}
    if not (logs.exists() and evaluated_with.exists() and json.loads(evaluated_with.read_text()) == this_run):
        uld("eval", "tofu", "--target", work / "target", "--forget-set", f"forget10={artifact}", "--alpha", alpha,
            "--out", logs.parent, "--retain-logs", eval_logs(work, "retain reference"), "--generate-with", "vllm",
            "--scoring", "anchored", *(EVAL_SMOKE if smoke_dir else []))
        write_json_atomic(evaluated_with, this_run)


def calibration(target, artifact: Path) -> dict:
    """The forget set's calibration against the unseen authors (`uld calibrate-alpha`, written
    into its manifest), run first if the manifest holds none."""
    manifest = json.loads((artifact / "uld.json").read_text())
    if manifest.get("calibration", {}).get("unseen") != PROTOCOLS["mini"]["unseen"]:
        uld("calibrate-alpha", "--target", target, "--forget-set", artifact, "--unseen", PROTOCOLS["mini"]["unseen"], "--write")
        manifest = json.loads((artifact / "uld.json").read_text())
    return manifest["calibration"]


def record(work, level, reference_auc, results, choice, section=None):
    """BENCHMARKS.md's section and the results folder: the validation candidates, and once a
    forget10 assistant was chosen (by this run or an earlier one, augmented or not) its alpha and
    every forget10 evaluation in the workdir, so a later --validate-only run keeps them."""
    from report import invocation, write_section

    out = REPO / "benchmarks" / "results" / (f"tune-assistant-mini-{section}" if section else "tune-assistant-mini")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", {"candidates": CANDIDATES, "budget": BUDGET, "validation": VALIDATION,
                                            "validation_retain": VALIDATION_RETAIN, "finetune": FINETUNE,
                                            "unseen": PROTOCOLS["mini"]["unseen"], "utility_floor": UTILITY_FLOOR,
                                            "fq_aim": FQ_AIM, "fq_alphas": FQ_ALPHAS, "fq_fine_step": FQ_FINE_STEP,
                                            "alpha_rule": ALPHA_RULE, "extra_qa": QA_SIZES,
                                            "general_questions": "general:heldout + SIMPLE_FACTS",
                                            "famous_questions": "famous_names.py (benchmarks/data/famous-people.jsonl)",
                                            "scoring": "anchored", "seed": 0})
    recorded = choices(work, variants=True)
    # every forget10 assistant's choice (each seed's), not only this run's, which a --seed run would overwrite
    write_json_atomic(out / "validation.json", {"unseen_prob": level, "candidates": results, "choice": choice,
                                                "forget10_choices": recorded})
    text = (f"Budget {BUDGET} (a candidate's own epochs override it), seed 0. The target's mean answer probability on "
            f"authors it never learned ({PROTOCOLS['mini']['unseen']}): {level:.4f}. Validation candidates at the rule's alpha: the "
            f"middle of the run of alphas (steps of {FQ_FINE_STEP:g}) around the highest validation forget quality on "
            f"the grid where it stays >= {FQ_AIM:g} (anchored scoring; reference: the validation retain model, "
            f"{VALIDATION_RETAIN}); then forget quality at the grid alpha nearest the calibrated one, and privleak on the "
            f"validation split (min-k against unseen authors, as `uld eval tofu` reads it on forget10; reference: the "
            f"validation retain model's AUC, {reference_auc:.3f}), not used by the rule:"
            f"\n\n" + validation_table(results, choice) + "\n\n" + along_alpha(choice["training"], results[choice["training"]]))
    if recorded:
        table = forget10_table(work)
        write_json_atomic(out / "forget10.json", table["summaries"])
        text += "\n\n" + "\n\n".join(map(forget10_text, recorded)) + "\n\n" + FORGET10_TABLE_INTRO + "\n\n" + table["text"]
    heading = "Tuning the ULD assistant on a validation split (tofu-mini)"
    write_section(f"tune-assistant:mini:{section}" if section else "tune-assistant:mini",
                  f"{heading} ({section})" if section else heading, invocation(), text)


def validation_table(results: dict, choice: dict) -> str:
    lines = ["| training | forget CE | retain: uniform CE - log V | general: uniform CE - log V | calibrated alpha | "
             "rule's alpha (run of validation forget quality >= aim) | validation forget quality there | "
             "validation forget prob | real authors + world facts prob (x target) | general greedy ROUGE-L | "
             "famous names kept | chosen | "
             "forget quality at the calibrated alpha | validation privleak at the rule's alpha | "
             "alpha of validation privleak nearest 0 (its forget quality) |", "|---|" + "---|" * 14]
    for name, r in results.items():
        calibrated_alpha = "not reached" if r["probability_alpha"] is None else f"{r['probability_alpha']:g}"
        at_calibrated = ("-" if r["probability_alpha"] is None else
                         f"{r['fq_by_alpha'][str(min(FQ_ALPHAS, key=lambda a: abs(a - r['probability_alpha'])))]:.3g}")
        retain = CANDIDATES[name]["retain"]
        extra = f" + {' and '.join(retain)} retain data" if retain else ""
        lines.append(f"| {name} {CANDIDATES[name]['training']}{extra} | {r['forget_ce']:.2f} | {r['retain_uniform_excess']:.2f} | "
                     f"{r['general_uniform_excess']:.2f} | {calibrated_alpha} | {r['alpha']:g} ({aim_run(r)}) | {r['fq']:.3g} | "
                     f"{r['forget_prob']:.4f} | {r['utility_prob'] / r['target_utility_prob']:.3f} | {r['greedy_rouge']:.3f} | "
                     f"{r['famous_kept']:.3f} | "
                     f"{'yes' if name == choice['training'] else ''} | {at_calibrated} | {privacy_columns(r)} |")
    return "\n".join(lines)


def aim_run(r: dict) -> str:
    low, high = r["aim_run"]
    return f"peak {r['peak_alpha']:g} under the aim" if low == high else f"{low:g}-{high:g}"


def along_alpha(name: str, r: dict) -> str:
    """The chosen candidate's validation forget quality and privleak at every tenth of alpha up to 1."""
    alphas = [str(a) for a in FQ_ALPHAS if a <= 1 and round(a * 10, 6).is_integer()]
    return "\n".join([f"The chosen candidate ({name}) on the validation split along alpha:", "",
                      "| alpha | " + " | ".join(alphas) + " |", "|---|" + "---|" * len(alphas),
                      "| forget quality | " + " | ".join(f"{r['fq_by_alpha'][a]:.2g}" for a in alphas) + " |",
                      "| privleak | " + " | ".join(f"{r['privleak_by_alpha'][a]:+.0f}" for a in alphas) + " |"])


def privacy_columns(r: dict) -> str:
    privleak = r["privleak_by_alpha"]
    nearest = min(FQ_ALPHAS, key=lambda a: (abs(privleak[str(a)]), a))
    return f"{privleak[str(r['alpha'])]:+.1f} | {nearest:g} ({r['fq_by_alpha'][str(nearest)]:.3g})"


def forget10_table(work: Path) -> dict:
    lines = ["| model | forget quality | forget quality, first 300 | model utility | forget ROUGE-L | forget Q_A_Prob | "
             "retain Q_A_Prob | privleak |", "|---|---|---|---|---|---|---|---|"]
    summaries = forget10_summaries(work, [label for label in EVALS if label != "retain reference"])
    for label, summary in summaries.items():
        s, first = summary["all"], summary["first_300"]
        lines.append(f"| {label} | {s['forget_quality']:.3g} | {first['forget_quality']:.3g} | {s['model_utility']:.4f} | "
                     f"{s['forget_Q_A_ROUGE']:.4f} | {s['forget_Q_A_Prob']:.4f} | {s['retain_Q_A_Prob']:.4f} | {s['privleak']:.2f} |")
    return {"summaries": summaries, "text": "\n".join(lines)}


def forget10_text(choice: dict) -> str:
    calibration = choice["calibration"]
    scaled = (f"times the validation ratio {choice['alpha_ratio']:.3f}" if choice["alpha_ratio"]
              else "(the validation candidate never reached the unseen level: its step-1 alpha is used)")
    trained = "" if choice.get("augmented", True) else ", trained without augmentation as the validation candidates are"
    trained += f", seed {choice['seed']}" if choice.get("seed") else ""
    trained += f", {choice['epochs']} epochs instead of the candidate's" if choice.get("epochs") else ""
    return (f"The forget10 assistant ({choice['final']}{trained}): `uld calibrate-alpha` on forget10's own answers gave "
            f"{calibration['alpha']:g} (forget answer probability {calibration['forget_prob_at_0']:.4f} -> "
            f"{calibration['forget_prob']:.4f}; unseen level {calibration['unseen_prob']:.4f}), {scaled}: "
            f"**alpha {choice['alpha']:g}**. Its greedy answers to the general questions keep ROUGE-L "
            f"{choice['final_greedy_rouge']:.3f} of the target's (reported, not used); along alpha: "
            + ", ".join(f"{a}: {r:.3f}" for a, r in choice["final_greedy_curve"].items()) + "."
            + (f" Famous names kept (famous_names.py): {famous['rule']:.3f} at the rule's alpha, "
               f"{famous['calibrated']:.3f} at the calibrated alpha." if (famous := choice.get("final_famous_kept")) else ""))


# said once under every assistant's paragraph (each seed has one), over the one table of them all
FORGET10_TABLE_INTRO = ("forget10, every evaluation in the workdir; each assistant's rule row is the one at the calibrated alpha "
                        "x validation ratio, its row at the calibrated alpha alone shows what the ratio does (first 300: each "
                        "split's first 300 items, as the reference code evaluates, `uld eval summarize --limit 300`):")


if __name__ == "__main__":
    main()
