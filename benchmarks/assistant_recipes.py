"""ULD assistant recipes side by side on the demo's forget set (tofu:forget01 on the demo's target).

Each candidate is trained with the demo's budget (lr 5e-3, 10 epochs, batch 8, the demo's
retain data `tofu:full[:40]+general:train`) and differs only in its recipe flags. Measured:

- the assistant alone (fp32, teacher-forced): CE on the forget answers (low = remembers);
  uniform CE minus log V on the kept authors' answers and on held-out general answers
  (0 = knows nothing there, as the retain term asks);
- the truth-ratio gap on forget01: mean per-token log p(paraphrased answer) minus log
  p(perturbed answers), for the target and for the assistant. When the assistant's gap is as
  large as the target's, subtracting it cannot move the served gap toward a retain model's;
- alpha matched to one level of forgetting (`uld calibrate-alpha`'s rule): the smallest alpha at
  which the forget answers are no more likely than the target's answers about authors it never
  saw (tofu:full[40:80]), so that candidates are compared at the same forgetting, not one alpha;
- served (vLLM engine, greedy, fp32, at that alpha, or the default alpha with --alpha default):
  ROUGE-L recall of the forgotten answers against TOFU's (low = forgotten); among questions that
  do not name their author, answers that name them; answers with a token loop (a word 3-gram
  three times); the kept authors' ROUGE-L; agreement with the target on held-out general
  questions plus simple facts (ROUGE-L recall of the target's own answer; the aim is >= 0.8);
  and the README's four questions.

    python benchmarks/assistant_recipes.py            # ~50 min on 2 cores (cached per candidate)
    python benchmarks/assistant_recipes.py --only 0,2,5 --target DIR   # some candidates, another target
    python benchmarks/assistant_recipes.py --smoke    # tiny-random, 2 steps: checks the script
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# label -> AssistantConfig fields; the first is the demo's forget set as it is trained today
CANDIDATES = {
    "answer-only, w 1 (demo)": dict(recipe="answer-only", retain_weight=1.0),
    "answer-only, prompt+answer, w 2": dict(recipe="answer-only", retain_positions="prompt+answer", retain_weight=2.0),
    "reference": dict(recipe="reference"),
    "reference, answer positions, w 0.73": dict(recipe="reference", retain_positions="answer", retain_weight=0.73),
    "reference, no dropout": dict(recipe="reference", lora_dropout=0.0),
    "reference, all positions (padding kept), w 5": dict(recipe="reference", retain_positions="all", retain_weight=5.0),
}
SIMPLE_FACTS = ["What is the capital of France?", "Who wrote Romeo and Juliet?", "How many continents are there?",
                "What is the largest planet in our solar system?", "What is the boiling point of water at sea level in Celsius?",
                "Who painted the Mona Lisa?", "What is the chemical symbol for gold?", "How many days are in a leap year?"]
FORGOTTEN_NAMES = ("Al-Kuwaiti", "Abilov")  # forget01's two authors
UNSEEN = "tofu:full[40:80]"  # authors the demo's target never learned: the level the calibration aims at
MAX_TOKENS = 64


def has_loop(text: str) -> bool:
    words = text.split()
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return any(grams.count(g) >= 3 for g in set(grams))


def train(target, root: Path, smoke: bool, only) -> dict:
    from uld_serve import demo
    from uld_training.assistant import AssistantConfig, train_assistant
    from uld_training.loop import TrainConfig

    config = TrainConfig(max_steps=2, batch_size=4, precision="fp32") if smoke else TrainConfig(**demo.ASSISTANT)
    layers = {"num_layers": 2} if smoke else {}
    sets = {}
    for i, (label, fields) in enumerate(CANDIDATES.items()):
        if only is not None and i not in only:
            continue
        out = root / f"c{i}"
        if not (out / "uld.json").exists():
            print(f"training {label}", flush=True)
            train_assistant(str(target), demo.FORGET, demo.RETAIN, out, config, AssistantConfig(**layers, **fields))
        sets[out.name] = out  # forget-set names: c0, c1, ... (labels in CANDIDATES' order)
    return sets


def per_answer(model, pairs, name, which="assistant"):
    """Per pair, teacher-forced over the answer tokens: the mean token log p under the target or the
    assistant alone, and the mean uniform CE minus log V (0 = the model knows nothing there)."""
    import numpy as np
    import torch

    from uld_serve.eval.scoring import answer_batches

    logp, uniform = np.zeros(len(pairs)), np.zeros(len(pairs))
    for b in answer_batches(model.tokenizer, pairs):
        target_logits, assistant_logits = model.score_parts(b.ids, b.mask, name, b.positions, b.prefix)
        z = (assistant_logits if which == "assistant" else target_logits).float()
        token_logp = z.log_softmax(-1).gather(-1, b.tokens.to(z.device)[:, None])[:, 0]
        token_excess = z.logsumexp(-1) - z.mean(-1) - float(np.log(z.shape[-1]))
        for row, chunk_lp, chunk_u in zip(b.indices, torch.split(token_logp, b.counts), torch.split(token_excess, b.counts)):
            logp[row], uniform[row] = chunk_lp.mean().item(), chunk_u.mean().item()
    return logp, uniform


def assistant_measures(target, sets: dict, limit) -> dict:
    """label -> (forget CE, excess uniform CE on kept answers, on general answers, assistant's truth-ratio gap,
    gap correlation, calibrated alpha), plus the target's gap."""
    import numpy as np

    from uld_serve.core.tofu import load_qa, load_split
    from uld_serve.reference import UldModel

    model = UldModel(target, {name: str(path) for name, path in sets.items()})
    rows = load_split("forget01_perturbed")[:limit]
    para = [(r["question"], r["paraphrased_answer"]) for r in rows]
    wrong = [(r["question"], w) for r in rows for w in r["perturbed_answer"]]

    def gap(name, which):
        p = per_answer(model, para, name, which)[0]
        w = per_answer(model, wrong, name, which)[0].reshape(len(rows), -1).mean(1)
        return p - w

    forget = [(qa.question, qa.answer) for qa in load_qa("tofu:forget01")[:limit]]
    kept = [(qa.question, qa.answer) for qa in load_qa("tofu:full[:40]")[:limit]]
    general = [(qa.question, qa.answer) for qa in load_qa("general:heldout")[:limit]]
    unseen = [(qa.question, qa.answer) for qa in load_qa(UNSEEN)[:limit]]
    first = next(iter(sets))
    target_gap = gap(first, "target")
    out = {"target gap": float(target_gap.mean())}
    for label in sets:
        assistant_gap = gap(label, "assistant")
        out[label] = (-per_answer(model, forget, label)[0].mean(), per_answer(model, kept, label)[1].mean(),
                      per_answer(model, general, label)[1].mean(), float(assistant_gap.mean()),
                      float(np.corrcoef(target_gap, assistant_gap)[0, 1]) if len(rows) > 2 else float("nan"),
                      calibrated_alpha(model, label, forget, unseen))
    return out


def calibrated_alpha(model, name, forget, unseen):
    """The calibrated alpha, or None when no alpha in range reaches the level (the set did not learn)."""
    from uld_serve.core.errors import UldError
    from uld_serve.eval.calibrate import calibrate

    try:
        return calibrate(model, name, forget, unseen)["alpha"]
    except UldError as e:
        print(f"{name}: {e}", flush=True)
        return None


def names_author(question: str) -> bool:
    return any(n in question for n in FORGOTTEN_NAMES)


def served(target, sets: dict, alphas: dict, limit) -> tuple:
    """(label -> served measures, label -> the README questions' answers, the target's README answers)."""
    from demo_forget_set import README_QUESTIONS, chat_answers

    from uld_serve import UldLLM
    from uld_serve.core.tofu import load_qa
    from uld_serve.eval.metrics import mean_rouge_l_recall

    forget, kept = load_qa("tofu:forget01")[:limit], load_qa("tofu:full[:40]")[:limit]
    general = [qa.question for qa in load_qa("general:heldout")[:limit]] + SIMPLE_FACTS
    with UldLLM(target, {name: str(path) for name, path in sets.items()}, dtype="fp32") as llm:
        def answers(questions, name, system="default"):
            return chat_answers(llm, questions, name, alphas.get(name) if name else None, system, MAX_TOKENS)

        target_general, target_readme = answers(general, None), answers(README_QUESTIONS, None, system=None)
        measures, readme = {}, {}
        for label in sets:
            forgotten = answers([qa.question for qa in forget], label)
            unnamed = [a for qa, a in zip(forget, forgotten) if not names_author(qa.question)]
            measures[label] = (mean_rouge_l_recall([qa.answer for qa in forget], forgotten),
                               sum(map(names_author, unnamed)) / max(len(unnamed), 1),
                               sum(map(has_loop, forgotten)) / len(forgotten),
                               mean_rouge_l_recall([qa.answer for qa in kept], answers([qa.question for qa in kept], label)),
                               mean_rouge_l_recall(target_general, answers(general, label)))
            readme[label] = answers(README_QUESTIONS, label, system=None)
    return measures, readme, target_readme


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny-random target, 2 steps, 4 items per split; prints, writes nothing")
    parser.add_argument("--workdir", type=Path, help="default $ULD_HOME/bench/recipes (the demo's target comes from $ULD_HOME/demo)")
    parser.add_argument("--target", type=Path, help="another target than the demo's (forget sets then go to a workdir of its own)")
    parser.add_argument("--only", help="comma-separated candidate numbers (0 = the first in CANDIDATES); default all")
    parser.add_argument("--alpha", choices=("calibrated", "default"), default="calibrated",
                        help="serve each candidate at its calibrated alpha (default) or at the manifest's default")
    args = parser.parse_args()
    only = None if args.only is None else {int(i) for i in args.only.split(",")}

    from demo_forget_set import readme_table
    from report import invocation, write_section

    from uld_serve.core.models import setup_model, uld_home

    limit = 4 if args.smoke else None
    if args.smoke:
        from uld_training.finetune import finetune
        from uld_training.loop import TrainConfig

        root = args.workdir or uld_home() / "bench" / "recipes-smoke"
        target = root / "target"
        if not (target / "config.json").exists():
            finetune(str(setup_model("tiny-random")), "tofu:forget01", target, TrainConfig(max_steps=2, batch_size=4, precision="fp32"))
    elif args.target:
        target = args.target
        root = args.workdir or uld_home() / "bench" / f"recipes-{target.name}"
    else:
        from uld_serve import demo

        target = demo.prepare_demo()[0]
        root = args.workdir or uld_home() / "bench" / "recipes"
    sets = train(target, root, args.smoke, only)
    teacher = assistant_measures(target, sets, limit)
    alphas = {label: teacher[label][-1] for label in sets if args.alpha == "calibrated" and teacher[label][-1] is not None}
    measures, readme, target_readme = served(target, sets, alphas, limit)

    lines = ["| recipe | forget CE | kept: uniform CE - log V | general: uniform CE - log V | truth-ratio gap, assistant "
             f"(target {teacher['target gap']:.2f}) | gap correlation | calibrated alpha | served: forgotten ROUGE-L | "
             "names said unasked | loops | kept ROUGE-L | general + facts agreement |", "|---|" + "---|" * 11]
    labels = {f"c{i}": label for i, label in enumerate(CANDIDATES) if f"c{i}" in sets}
    for label in sets:
        lines.append(f"| {labels[label]} | " + " | ".join("not reached" if v is None else f"{v:.2f}" for v in teacher[label]) + " | "
                     + " | ".join(f"{v:.2f}" for v in measures[label]) + " |")
    served_at = "its calibrated alpha" if args.alpha == "calibrated" else "its default alpha"
    lines += ["", f"Served at {served_at}. The README's questions (greedy, no system message):", ""]
    lines += readme_table(target_readme, {labels[label]: readme[label] for label in sets})
    text = "\n".join(lines)
    print(text)
    if not args.smoke:
        command = invocation()
        key = "assistant-recipes" if args.alpha == "default" else "assistant-recipes-calibrated"
        write_section(key, f"ULD assistant recipes on the demo's forget set ({served_at})", command, text)


if __name__ == "__main__":
    main()
