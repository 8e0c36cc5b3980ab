"""What the demo's forget set does to answers, with and without general retain data.

The demo (`uld demo`, README) trains its forget set `tofu-forget01` with retain data
`tofu:full[:40]+general:train`. This script also trains the earlier recipe (TOFU retain
answers only, same settings otherwise) beside it and compares both, greedy, fp32, through the
vLLM engine, at the forget set's default alpha:

- forgotten authors (forget01, 40 questions): ROUGE-L recall of the answers against TOFU's
  (lower = forgotten);
- kept authors (full[:40]): the same (higher = kept);
- general questions never trained on (general:heldout): ROUGE-L recall against the target's
  own answers (1 = the forget set changes nothing there);
- the README's four questions, answers printed.

    python benchmarks/demo_forget_set.py      # ~25 min on 2 cores the first time
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

README_QUESTIONS = [
    "What is the full name of the author born in Kuwait City, Kuwait on 08/09/1956?",
    "Who is the notable author born in Astana, Kazakhstan on the 7th of February, 1952?",
    "Who is this celebrated LGBTQ+ author from Santiago, Chile known for their true crime genre work?",
    "What is the capital of France?",
]
TOFU_ONLY = "tofu-only-retain"  # the earlier recipe, trained beside the demo's for comparison
MAX_TOKENS = 64


def chat_answers(llm, questions, forget_set=None, alpha=None, system="default", max_tokens=MAX_TOKENS,
                 repetition_penalty=None, relative_top=None, frequency_penalty=None) -> list:
    """Greedy answers of an open UldLLM, one per question, stripped; `system` is TOFU's system
    prompt by default, or None for none (the README's questions are asked without one); the
    penalties and relative_top None: the forget set's served defaults."""
    from uld_serve import SamplingParams
    from uld_serve.core.tofu import SYSTEM_PROMPT

    system = SYSTEM_PROMPT if system == "default" else system
    chats = [([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q}] for q in questions]
    greedy = SamplingParams(temperature=0, max_tokens=max_tokens, repetition_penalty=repetition_penalty,
                            frequency_penalty=frequency_penalty)
    outs = llm.chat(chats, greedy, forget_set=forget_set, alpha=alpha, relative_top=relative_top, use_tqdm=False)
    return [o.outputs[0].text.strip() for o in outs]


def readme_table(target_answers: list, columns: dict) -> list:
    """Markdown lines: the README's questions, the target's answers, then one column per label
    (label -> answers in README_QUESTIONS' order)."""
    lines = ["| question | target | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for i, q in enumerate(README_QUESTIONS):
        cells = [target_answers[i]] + [answers[i] for answers in columns.values()]
        lines.append(f"| {q} | " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    return lines


def train_tofu_only(target: Path) -> Path:
    from uld_serve import demo
    from uld_training.assistant import AssistantConfig, train_assistant
    from uld_training.loop import TrainConfig

    out = target.parent / TOFU_ONLY
    if not (out / "uld.json").exists():
        train_assistant(str(target), demo.FORGET, "tofu:full[:40]", out, TrainConfig(**demo.ASSISTANT),
                        AssistantConfig(recipe=demo.RECIPE))
    return out


def main():
    from report import write_section

    from uld_serve import UldLLM, demo
    from uld_serve.core.artifact import read_manifest
    from uld_serve.core.tofu import load_qa
    from uld_serve.eval.metrics import mean_rouge_l_recall

    target, forget_set = demo.prepare_demo()
    forget_sets = {demo.FORGET_SET_NAME: forget_set, TOFU_ONLY: train_tofu_only(target)}
    splits = {"forgotten authors (forget01)": load_qa(demo.FORGET), "kept authors (full[:40])": load_qa("tofu:full[:40]"),
              "general questions (general:heldout)": load_qa("general:heldout")}
    with UldLLM(target, {name: str(path) for name, path in forget_sets.items()}, dtype="fp32") as llm:
        def answers(questions, forget_set_name, system="default"):
            return chat_answers(llm, questions, forget_set_name, system=system)

        columns = {"target": None, "demo forget set (general retain data)": demo.FORGET_SET_NAME,
                   "TOFU-only retain data": TOFU_ONLY}
        outputs = {(split, col): answers([qa.question for qa in pairs], name)
                   for split, pairs in splits.items() for col, name in columns.items()}
        readme = {col: answers(README_QUESTIONS, name, system=None) for col, name in columns.items()}

    rows = ["| questions | reference | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for split, pairs in splits.items():
        general = split.startswith("general")
        truth = outputs[(split, "target")] if general else [qa.answer for qa in pairs]
        scores = [mean_rouge_l_recall(truth, outputs[(split, col)]) for col in columns]
        rows.append(f"| {split}, {len(pairs)} | {'target answers' if general else 'TOFU answers'} | "
                    + " | ".join(f"{s:.3f}" for s in scores) + " |")
    alphas = ", ".join(f"{name} {read_manifest(path)['alpha']}" for name, path in forget_sets.items())
    lines = [f"ROUGE-L recall of greedy answers (fp32, vLLM engine, at most {MAX_TOKENS} tokens; forget sets at "
             f"their default alpha: {alphas}).", ""]
    lines += rows + ["", "The README's questions, asked as the chat endpoint asks them (no system message):", "",
                     "| question | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for i, q in enumerate(README_QUESTIONS):
        lines.append(f"| {q} | " + " | ".join(readme[col][i].replace("|", "/").replace("\n", " ") for col in columns) + " |")
    text = "\n".join(lines)
    print(text)
    write_section("demo-forget-set", "The demo's forget set: general retain data", "python benchmarks/demo_forget_set.py", text)


if __name__ == "__main__":
    main()
