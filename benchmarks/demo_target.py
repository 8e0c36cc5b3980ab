"""Does the demo's target keep SmolLM2's general answers while it learns four TOFU authors?

The demo fine-tunes SmolLM2 on `tofu:full[:40]+tofu:forget01` (80 QA). Candidates add
SmolLM2's own greedy answers to general questions (`general:train`, uld_serve/data/general)
to the fine-tune, so that it keeps answering them as SmolLM2 did, or fine-tune more gently
(lower lr, fewer epochs). Otherwise the demo's FINETUNE settings. Measured, greedy, fp32, vLLM engine, at most 64 tokens:

- the four authors learned: ROUGE-L recall of the TOFU answers (forget01 and full[:40]);
- general questions never trained on (`general:heldout` and a few simple facts): ROUGE-L
  recall of SmolLM2's own answers before fine-tuning (1 = unchanged);
- the fine-tune's wall time, and the simple facts' answers.

    python benchmarks/demo_target.py      # ~40 min on 2 cores (targets cached)
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEMO, MIXED = "tofu:full[:40]+tofu:forget01", "tofu:full[:40]+tofu:forget01+general:train[:80]"
# label -> (data, changes to the demo's FINETUNE settings); new candidates go at the end (cached by position)
CANDIDATES = {"TOFU only (the demo today)": (DEMO, {}),
              "+ general:train[:80]": (MIXED, {}),
              "+ general:train (280)": (DEMO + "+general:train", {}),
              "TOFU only, lr 1e-4, 5 epochs": (DEMO, dict(lr=1e-4, epochs=5)),
              "+ general:train[:80], lr 1e-4, 5 epochs": (MIXED, dict(lr=1e-4, epochs=5))}
MAX_TOKENS = 64


def main():
    from assistant_recipes import SIMPLE_FACTS
    from demo_forget_set import chat_answers
    from report import write_section

    from uld_serve import UldLLM, demo
    from uld_serve.core.models import EMBEDDED, resolve_model, uld_home
    from uld_serve.core.tofu import load_qa
    from uld_serve.eval.metrics import mean_rouge_l_recall
    from uld_training.finetune import finetune
    from uld_training.loop import TrainConfig

    root = uld_home() / "bench" / "demo-target"
    targets = {}
    for i, (label, (data, changes)) in enumerate(CANDIDATES.items()):
        out = root / f"t{i}"
        if not (out / "config.json").exists():
            print(f"fine-tuning {label}", flush=True)
            finetune(EMBEDDED, data, out, TrainConfig(**{**demo.FINETUNE, **changes}))
        targets[label] = out
    authors = load_qa("tofu:forget01") + load_qa("tofu:full[:40]")
    general = [qa.question for qa in load_qa("general:heldout")] + SIMPLE_FACTS

    def answers(target, questions):
        with UldLLM(str(target), {}, dtype="fp32") as llm:
            return chat_answers(llm, questions, max_tokens=MAX_TOKENS)

    base = answers(resolve_model(EMBEDDED), general)
    rows, facts = [], {"SmolLM2": base[-len(SIMPLE_FACTS):]}
    for label, target in targets.items():
        said = answers(target, [qa.question for qa in authors] + general)
        learned, kept = said[:len(authors)], said[len(authors):]
        log = json.loads((target / "training_log.json").read_text())
        wall = log[-1].get("wall_s") if isinstance(log, list) and log else None
        rows.append(f"| {label} | {mean_rouge_l_recall([qa.answer for qa in authors], learned):.3f} | "
                    f"{mean_rouge_l_recall(base, kept):.3f} | {wall if wall is None else round(wall)} |")
        facts[label] = kept[-len(SIMPLE_FACTS):]
    lines = ["| target data | four authors: ROUGE-L of TOFU answers | general: ROUGE-L of SmolLM2's own answers | fine-tune s |",
             "|---|---|---|---|", *rows, "", "| question | " + " | ".join(facts) + " |", "|---|" + "---|" * len(facts)]
    for i, q in enumerate(SIMPLE_FACTS):
        lines.append(f"| {q} | " + " | ".join(v[i].replace("|", "/").replace("\n", " ") for v in facts.values()) + " |")
    text = "\n".join(lines)
    print(text)
    write_section("demo-target", "The demo's target: general answers kept", "python benchmarks/demo_target.py", text)


if __name__ == "__main__":
    main()
