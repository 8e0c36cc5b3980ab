"""Does a retain term aimed at the served argmax leave general answers alone?

The demo's forget set changes the argmax at about a fifth of the target's general answer tokens
(`benchmarks/general_fragility.py`), although its uniform retain term is small: a greedy answer
changes only where the assistant prefers one of the target's close candidates over another, and
a push toward uniform over 49k tokens spends little of itself there. The contender term
(`uld train-assistant --contender-weight W --contenders M`) makes the assistant uniform among
the target's M likeliest tokens at every retain place as well.

Forget sets are trained as the demo's (`tofu:forget01`, reference recipe, same data and budget)
with the contender term at each weight, calibrated as the demo's, and compared with the demo's
forget set, teacher-forced on the target's own greedy answers to held-out general questions and
simple facts: how far the assistant is from uniform there (over the vocabulary and among the
target's likeliest tokens) and the share of answer tokens whose served argmax differs from the
target's (as `benchmarks/general_fragility.py` counts it; 2.3% keeps ROUGE-L agreement at 0.88).

    python benchmarks/contender_retain.py        # ~12 min a weight on 2 cores after the demo is cached
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WEIGHTS = (4.0, 16.0)
CONTENDERS = 16


def spread(model, questions, answers, contenders) -> tuple:
    """Teacher-forced on (question, answer), mean over answer tokens of how far the assistant is
    from uniform: (over the whole vocabulary, among the target's `contenders` likeliest tokens),
    each as CE(uniform, softmax) minus its floor log V or log M."""
    import math

    from uld_serve.eval.scoring import answer_batches
    from uld_training.assistant import contender_cross_entropy, uniform_cross_entropy

    whole, among, rows = 0.0, 0.0, 0
    for b in answer_batches(model.tokenizer, list(zip(questions, answers))):
        t, a = (x.float() for x in model.score_parts(b.ids, b.mask, "forget", b.positions, b.prefix))
        whole += float(uniform_cross_entropy(a)) * len(a) - math.log(a.shape[-1]) * len(a)
        among += float(contender_cross_entropy(a, t, contenders)) * len(a) - math.log(contenders) * len(a)
        rows += len(a)
    return whole / rows, among / rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=",".join(map(str, WEIGHTS)), help="comma-separated contender weights")
    parser.add_argument("--contenders", type=int, default=CONTENDERS)
    args = parser.parse_args()

    from assistant_recipes import SIMPLE_FACTS
    from general_fragility import flips, noisy_answers
    from report import invocation, write_section

    from uld_serve import demo
    from uld_serve.core.artifact import read_manifest
    from uld_serve.core.models import uld_home
    from uld_serve.core.tofu import load_qa
    from uld_serve.eval.calibrate import calibrate_forget_set
    from uld_serve.reference import UldModel
    from uld_training.assistant import AssistantConfig, train_assistant
    from uld_training.loop import TrainConfig

    target, demo_set = demo.prepare_demo()
    sets = {"demo (no contender term)": demo_set}
    for weight in map(float, args.weights.split(",")):
        path = uld_home() / "bench" / "contenders" / f"w{weight:g}-m{args.contenders}"
        if not (path / "uld.json").exists():
            train_assistant(str(target), demo.FORGET, demo.RETAIN, path, TrainConfig(**demo.ASSISTANT),
                            AssistantConfig(recipe=demo.RECIPE, contender_weight=weight, contenders=args.contenders))
        if "calibration" not in read_manifest(path):
            calibrate_forget_set(str(target), path, demo.UNSEEN, write=True)
        sets[f"contender weight {weight:g}, {args.contenders} contenders"] = path

    general = [qa.question for qa in load_qa("general:heldout")] + SIMPLE_FACTS
    plain = noisy_answers(UldModel(target), general, 0.0)
    rows = {}
    for label, path in sets.items():
        manifest = read_manifest(path)
        model = UldModel(target, {"forget": str(path)})
        changed = flips(model, general, plain, (), manifest["alpha"], manifest["relative_top"])["changed"]["forget set"]
        excess = spread(model, general, plain, args.contenders)
        rows[label] = (manifest["alpha"], manifest["result"]["forget_ce"], excess, changed)

    lines = [f"{len(general)} general questions and simple facts; excess CE = CE(uniform, softmax) minus its floor (log V, "
             f"log {args.contenders}).", "",
             "| forget set | forget CE, last batch | calibrated alpha | excess uniform CE | excess contender CE | "
             "answer tokens whose argmax changes |", "|---|---|---|---|---|---|"]
    for label, (alpha, forget_ce, (whole, among), changed) in rows.items():
        lines.append(f"| {label} | {forget_ce:.2f} | {alpha:.3f} | {whole:.2f} | {among:.2f} | {changed:.3f} |")
    text = "\n".join(lines)
    print(text)
    write_section("contender-retain", "A retain term among the target's likeliest tokens",
                  invocation(), text)


if __name__ == "__main__":
    main()
