"""The demo's forget set served with repetition penalties (and filter r values, and frequency
penalties): does a penalty stop its loops, and what does it cost the answers it should keep?

A ULD forget set takes the target's likely tokens away from the answers it forgets; greedy
decoding of what is left can fall into a loop ("CORRESPONDENTS CORRESPONDENTS ..."). vLLM's
repetition penalty (applied after the ULD logits processor) is the usual cure; a larger filter
r (fewer tokens kept, the paper's scripts use 0.01 and 0.1) is another, and vLLM's frequency
penalty a third: it grows with each repeat and spares the prompt's tokens, which the
repetition penalty also pushes down (an answer that restates its question pays for it). For
each r and pair of penalties, the forget set is served (vLLM engine, greedy, fp32, its manifest's alpha) and
measured as `benchmarks/assistant_recipes.py` measures recipes:

- forgotten authors (forget01, 40): ROUGE-L recall of TOFU's answers (low = forgotten); the
  share of answers to questions that do not name their author which name one anyway; the
  share with a token loop (a word 3-gram three times);
- kept authors (full[:40]): ROUGE-L recall of TOFU's answers;
- held-out general questions plus simple facts: ROUGE-L recall of the target's own answer,
  served as a request without a forget set gets it (no penalty), and of the target's answer
  with the same penalty (what the penalty alone changes);
- the README's four questions.

    python benchmarks/repetition_penalty.py                # the demo's target and forget set (~15 min)
    python benchmarks/repetition_penalty.py --relative-tops 0.01,0.1 --penalties 1,1.1,1.2
    python benchmarks/repetition_penalty.py --target T --forget-set F --penalties 1,1.1
    python benchmarks/repetition_penalty.py --penalties 1.1,1.2 --section demo-on-amx
    python benchmarks/repetition_penalty.py --penalties 1,1.1 --frequency-penalties 0,0.5,1 --section frequency
    python benchmarks/repetition_penalty.py --smoke        # tiny-random, a few questions: checks the script
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PENALTIES = (1.0, 1.05, 1.1, 1.15, 1.2)
MAX_TOKENS = 64


def measure(llm, name, settings, limit, alpha=None) -> tuple:
    """((r, penalty, frequency penalty) -> row of measures, the same -> README answers, the
    target's README answers); alpha None: the forget set's own."""
    from assistant_recipes import SIMPLE_FACTS, has_loop, names_author
    from demo_forget_set import README_QUESTIONS, chat_answers

    from uld_serve import demo
    from uld_serve.core.tofu import load_qa
    from uld_serve.eval.metrics import mean_rouge_l_recall

    forget, kept = load_qa(demo.FORGET)[:limit], load_qa("tofu:full[:40]")[:limit]
    general = [qa.question for qa in load_qa("general:heldout")[:limit]] + SIMPLE_FACTS[:limit]

    def answers(questions, forget_set, penalty, frequency=0.0, system="default", r=None):
        return chat_answers(llm, questions, forget_set, alpha if forget_set else None, system, MAX_TOKENS,
                            repetition_penalty=penalty, relative_top=r, frequency_penalty=frequency)

    target_general = answers(general, None, 1.0)
    rows, readme = {}, {}
    target_at = {(1.0, 0.0): target_general}
    for r, p, f in settings:
        forgotten = answers([qa.question for qa in forget], name, p, f, r=r)
        unnamed = [a for qa, a in zip(forget, forgotten) if not names_author(qa.question)]
        served_general = answers(general, name, p, f, r=r)
        if (p, f) not in target_at:
            target_at[(p, f)] = answers(general, None, p, f)
        rows[(r, p, f)] = (mean_rouge_l_recall([qa.answer for qa in forget], forgotten),
                           sum(map(names_author, unnamed)) / max(len(unnamed), 1),
                           sum(map(has_loop, forgotten)) / len(forgotten),
                           mean_rouge_l_recall([qa.answer for qa in kept], answers([qa.question for qa in kept], name, p, f, r=r)),
                           mean_rouge_l_recall(target_general, served_general),
                           mean_rouge_l_recall(target_at[(p, f)], served_general),
                           sum(map(has_loop, served_general)) / len(served_general))
        readme[(r, p, f)] = answers(README_QUESTIONS, name, p, f, system=None, r=r)
    return rows, readme, answers(README_QUESTIONS, None, 1.0, system=None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=Path, help="default: the demo's (trained on first use)")
    parser.add_argument("--forget-set", type=Path, help="default: the demo's")
    parser.add_argument("--penalties", default=",".join(map(str, PENALTIES)), help="comma-separated; 1 = none")
    parser.add_argument("--relative-tops", help="comma-separated filter r values (default: the forget set's own)")
    parser.add_argument("--frequency-penalties", default="0", help="comma-separated vLLM frequency penalties (0 = none)")
    parser.add_argument("--section", help="BENCHMARKS.md section to write instead of the usual one (a run on another kind of "
                        "CPU, whose demo trains in another precision, keeps the first run's section)")
    parser.add_argument("--smoke", action="store_true", help="tiny-random target and forget set, 2 questions a split; writes nothing")
    args = parser.parse_args()
    penalties = [float(p) for p in args.penalties.split(",")]
    frequencies = [float(f) for f in args.frequency_penalties.split(",")]

    from demo_forget_set import readme_table
    from report import invocation, write_section

    from uld_serve import UldLLM, demo
    from uld_serve.core.artifact import read_manifest

    limit = 2 if args.smoke else None
    if args.smoke:
        target, forget_set = smoke_models()
    elif args.target or args.forget_set:
        if not (args.target and args.forget_set):
            parser.error("--target and --forget-set go together")
        target, forget_set = args.target, args.forget_set
    else:
        target, forget_set = demo.prepare_demo()
    manifest = read_manifest(forget_set)
    alpha = manifest["alpha"]
    rs = [float(r) for r in args.relative_tops.split(",")] if args.relative_tops else [manifest["relative_top"]]
    settings = [(r, p, f) for r in rs for p in penalties for f in frequencies]
    with UldLLM(target, {"forget": str(forget_set)}, dtype="fp32") as llm:
        rows, readme, target_readme = measure(llm, "forget", settings, limit)

    lines = [f"Forget set `{forget_set.name}` at its manifest's alpha {alpha}; greedy, fp32, vLLM engine, at most {MAX_TOKENS} tokens.",
             "", "| filter r | repetition penalty | frequency penalty | forgotten ROUGE-L | names said unasked | loops (forgotten) | "
             "kept ROUGE-L | general + facts: agreement with the target | with the target at the same penalties | loops (general) |",
             "|---|---|---|" + "---|" * 7]
    lines += [f"| {r:g} | {p:g} | {f:g} | " + " | ".join(f"{v:.2f}" for v in rows[(r, p, f)]) + " |" for r, p, f in settings]
    lines += ["", "The README's questions (greedy, no system message):", ""]
    lines += readme_table(target_readme, {f"r {r:g}, penalty {p:g}" + (f", frequency {f:g}" if f else ""): readme[(r, p, f)]
                                          for r, p, f in settings})
    text = "\n".join(lines)
    print(text)
    if not args.smoke:
        key, heading = (("repetition-penalty-filter", "The demo's forget set served with a repetition penalty and a larger filter r")
                        if args.relative_tops else ("repetition-penalty", "The demo's forget set served with a repetition penalty"))
        if args.section:
            key, heading = args.section, f"{heading} ({args.section})"
        write_section(key, heading, invocation(), text)


def smoke_models() -> tuple:
    from uld_serve.core.models import setup_model, uld_home
    from uld_training.assistant import AssistantConfig, train_assistant
    from uld_training.finetune import finetune
    from uld_training.loop import TrainConfig

    root = uld_home() / "bench" / "penalty-smoke"
    target, forget_set = root / "target", root / "forget"
    config = TrainConfig(max_steps=2, batch_size=4, precision="fp32")
    if not (target / "config.json").exists():
        finetune(str(setup_model("tiny-random")), "tofu:forget01", target, config)
    if not (forget_set / "uld.json").exists():
        train_assistant(str(target), "tofu:forget01", "tofu:full[:40]", forget_set, config, AssistantConfig(num_layers=2))
    return target, forget_set


if __name__ == "__main__":
    main()
