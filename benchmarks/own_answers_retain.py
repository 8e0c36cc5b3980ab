"""Does the assistant leave general answers alone when its retain data holds the target's own
general answers? (The demo's retain data holds SmolLM2's answers from before the target's
fine-tune, which the target no longer gives: general agreement 0.31.)

The target answers `general:train`'s questions (greedy, vLLM engine, TOFU's system prompt, at
most 64 tokens); a forget set is trained as the demo's (`tofu:forget01`, reference recipe, same
budget) with retain data `tofu:full[:40]` plus those answers, calibrated as the demo's, and
compared with the demo's forget set: served measures as in `benchmarks/repetition_penalty.py`
(no penalty and 1.1), and the share of general answer tokens whose argmax the forget set
changes, teacher-forced on the target's own held-out answers (`benchmarks/general_fragility.py`).

    python benchmarks/own_answers_retain.py      # ~20 min on 2 cores after the demo is cached
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SETTINGS = [(0.01, 1.0, 0.0), (0.01, 1.1, 0.0)]  # (filter r, repetition penalty, frequency penalty)


def main():
    from assistant_recipes import SIMPLE_FACTS
    from demo_forget_set import chat_answers
    from general_fragility import flips, noisy_answers
    from repetition_penalty import measure
    from report import write_section

    from uld_serve import UldLLM, demo
    from uld_serve.core.artifact import read_manifest
    from uld_serve.core.models import uld_home
    from uld_serve.core.tofu import load_qa
    from uld_serve.eval.calibrate import calibrate_forget_set
    from uld_serve.reference import UldModel
    from uld_training.assistant import AssistantConfig, train_assistant
    from uld_training.loop import TrainConfig

    target, demo_set = demo.prepare_demo()
    root = uld_home() / "bench" / "own-answers"
    root.mkdir(parents=True, exist_ok=True)
    answers_file, own_set = root / "target_general_answers.jsonl", root / "forget-set"
    if not answers_file.exists():
        questions = [qa.question for qa in load_qa("general:train")]
        with UldLLM(target, dtype="fp32") as llm:
            answers = chat_answers(llm, questions)
        answers_file.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in zip(questions, answers)))
    if not (own_set / "uld.json").exists():
        train_assistant(str(target), demo.FORGET, f"tofu:full[:40]+jsonl:{answers_file}", own_set, TrainConfig(**demo.ASSISTANT),
                        AssistantConfig(recipe=demo.RECIPE))
    if "calibration" not in read_manifest(own_set):
        calibrate_forget_set(str(target), own_set, demo.UNSEEN, write=True)

    sets = {"demo (SmolLM2's general answers)": demo_set, "the target's own general answers": own_set}
    general = [qa.question for qa in load_qa("general:heldout")] + SIMPLE_FACTS
    model = UldModel(target)
    plain = noisy_answers(model, general, 0.0)
    rows = {}
    for label, path in sets.items():
        manifest = read_manifest(path)
        with UldLLM(target, {"f": str(path)}, dtype="fp32") as llm:
            served = measure(llm, "f", SETTINGS, None)[0]
        scored = UldModel(target, {"forget": str(path)})
        changed = flips(scored, general, plain, (), manifest["alpha"], manifest["relative_top"])["changed"]["forget set"]
        rows[label] = (manifest["alpha"], changed, served)

    lines = ["| retain data besides the kept authors | calibrated alpha | general answer tokens changed | penalty | "
             "forgotten ROUGE-L | names said unasked | loops (forgotten) | kept ROUGE-L | general + facts agreement |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, (alpha, changed, served) in rows.items():
        for r, p, f in SETTINGS:
            cells = " | ".join(f"{v:.2f}" for v in served[(r, p, f)][:5])
            lines.append(f"| {label} | {alpha:.3f} | {changed:.3f} | {p:g} | {cells} |")
    text = "\n".join(lines)
    print(text)
    write_section("own-answers-retain", "The assistant's retain data: the target's own general answers",
                  "python benchmarks/own_answers_retain.py", text)


if __name__ == "__main__":
    main()
