"""Does a forget set that learns its answers more sharply need a smaller alpha, and so change
fewer general answers?

`benchmarks/uniform_floor.py` shows that on SmolLM2 even the most uniform assistant changes
general answers in proportion to alpha, so the one lever left for the demo's general agreement
is the alpha that calibration needs. Forget sets are trained as the demo's (`tofu:forget01`,
reference recipe, lr 5e-3) for more epochs, calibrated as the demo's, and compared with the
demo's forget set (10 epochs), teacher-forced: the share of answer tokens whose served argmax
differs from the target's, on the target's own greedy answers to held-out general questions and
simple facts (fewer is better) and on the forgotten answers (more is forgetting), and the same
for the floor's know-nothing logits at each calibrated alpha (what a perfectly uniform assistant
would still change). Then each is served as the demo serves it (vLLM engine, fp32, greedy,
its served penalty, `demo.FREQUENCY_PENALTY`; the recorded run served a repetition
penalty of 1.1, the default then): the measures of `benchmarks/repetition_penalty.py`. The longer-trained
sets are also measured at other alphas (`--alphas`, default the demo's calibrated one): whether
they keep more general answers than the demo's at the same served forgetting. Forgetting is
also checked as the README asks, with no system message: the forgotten names said unasked and
the loops.

`--prompt-forms system,none` trains the longer sets on questions with and without TOFU's system
prompt (`uld train-assistant --prompt-forms`); `--forbid-names` calibrates them with the greedy
check of the forgotten authors' names (`uld calibrate-alpha --forbid`). `--layers` and
`--extra-retain` try the levers that won on tofu-mini's forget10 (BENCHMARKS.md, "What moved
tofu-mini's forget10"): a deeper assistant (K = 15 of 30) and retain data about people
outside literature (`general:names-train`, answered by the embedded model).

    python benchmarks/sharper_forget.py --epochs 20 --alphas 0.7,demo
    python benchmarks/sharper_forget.py --epochs 20 --prompt-forms system,none --forbid-names --alphas 0.7,demo
    python benchmarks/sharper_forget.py --epochs 20 --prompt-forms system,none --forbid-names --alphas "" \
        --layers 15 --extra-retain general:names-train

About 7 minutes of training per 10 epochs on 2 cores (fp32) once the demo is cached, and about
6 minutes to measure each row.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EPOCHS = (20,)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", default=",".join(map(str, EPOCHS)), help="comma-separated epoch counts besides the demo's")
    parser.add_argument("--alphas", default="demo",
                        help="comma-separated alphas the longer-trained sets are also served at ('demo': the demo's calibrated one)")
    parser.add_argument("--prompt-forms", default="system", help="the prompt forms the longer sets are trained under")
    parser.add_argument("--forbid-names", action="store_true", help="calibrate them with the greedy check of the forgotten names")
    parser.add_argument("--layers", type=int, default=None, help="K of the longer sets (default: the demo's)")
    parser.add_argument("--extra-retain", default="", help="a data spec the longer sets retain besides the demo's")
    args = parser.parse_args()

    from assistant_recipes import FORGOTTEN_NAMES, SIMPLE_FACTS, has_loop, names_author
    from demo_forget_set import chat_answers, readme_table
    from general_fragility import noisy_answers
    from report import invocation, write_section
    from repetition_penalty import measure
    from uniform_floor import changed_share, floor

    from uld_serve import UldLLM, demo
    from uld_serve.core.artifact import read_manifest
    from uld_serve.core.models import load_model, uld_home
    from uld_serve.core.tofu import check_prompt_forms, load_qa
    from uld_serve.eval.calibrate import calibrate_forget_set
    from uld_serve.reference import UldModel
    from uld_training.assistant import AssistantConfig, train_assistant
    from uld_training.loop import TrainConfig

    target, demo_set = demo.prepare_demo()
    sets = {f"{read_manifest(demo_set)['training']['epochs']} (demo)": demo_set}
    forms = check_prompt_forms(args.prompt_forms)
    forbidden = FORGOTTEN_NAMES if args.forbid_names else ()
    retain = "+".join(filter(None, [demo.RETAIN, args.extra_retain]))
    # what the longer sets change besides the epochs: (folder name part, table label part)
    levers = ([("-".join(forms), "+".join(forms))] if forms != ("system",) else []) \
        + ([(f"k{args.layers}", f"K {args.layers}")] if args.layers else []) \
        + ([(args.extra_retain.replace(":", "-").replace("+", "-"), f"+ {args.extra_retain}")] if args.extra_retain else [])
    for epochs in map(int, args.epochs.split(",")):
        path = uld_home() / "bench" / "sharper" / "-".join([f"e{epochs}", *(part for part, _ in levers)])
        if not (path / "uld.json").exists():
            train_assistant(str(target), demo.FORGET, retain, path, TrainConfig(**{**demo.ASSISTANT, "epochs": epochs}),
                            AssistantConfig(recipe=demo.RECIPE, prompt_forms=forms, frequency_penalty=demo.FREQUENCY_PENALTY,
                                            num_layers=args.layers))
        calibration = read_manifest(path).get("calibration")
        if (calibration is None or calibration.get("forbidden", []) != list(forbidden)
                or (forbidden and calibration.get("frequency_penalty") != demo.FREQUENCY_PENALTY)):
            calibrate_forget_set(str(target), path, demo.UNSEEN, write=True, forbidden=forbidden)
        sets[", ".join([str(epochs), *(label for _, label in levers)])] = path

    bias = floor(load_model(target))["logits"]
    general = [qa.question for qa in load_qa("general:heldout")] + SIMPLE_FACTS
    plain = noisy_answers(UldModel(target), general, 0.0)
    general_pairs = list(zip(general, plain))
    forgotten = [(qa.question, qa.answer) for qa in load_qa(demo.FORGET)]
    lines = [f"Teacher-forced on the target's own greedy answers to {len(general)} general questions and simple facts and on "
             f"the {len(forgotten)} forgotten answers; r 0.01.", "",
             "| epochs | forget CE, last batch | alpha | general answer tokens changed | forgotten answer tokens changed "
             "| general tokens the floor's logits change at that alpha | served: forgotten ROUGE-L | names said unasked | "
             "loops (forgotten) | kept ROUGE-L | general + facts agreement | no system message: names said unasked | "
             "no system message: loops (forgotten) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    demo_alpha = read_manifest(demo_set)["alpha"]
    extra = [demo_alpha if a == "demo" else float(a) for a in args.alphas.split(",") if a]
    answers = {}
    for label, path in sets.items():
        manifest = read_manifest(path)
        calibrated, r = manifest["alpha"], manifest["relative_top"]
        model = UldModel(target, {"forget": str(path)})
        with UldLLM(target, {"f": str(path)}, dtype="fp32") as llm:
            for alpha in [calibrated] + ([] if path == demo_set else extra):
                cells = [changed_share(model, pairs, alpha, r, lambda t, a: a) for pairs in (general_pairs, forgotten)]
                at_floor = changed_share(model, general_pairs, alpha, r, lambda t, a: bias.to(t.device).expand_as(t))
                setting = (r, 1.0, demo.FREQUENCY_PENALTY)
                rows, readme, target_answers = measure(llm, "f", [setting], None, alpha=alpha)
                served = rows[setting]
                answers[f"{label}, alpha {alpha:.3f}"] = readme[setting]
                bare = chat_answers(llm, [qa[0] for qa in forgotten], "f", alpha, None, frequency_penalty=demo.FREQUENCY_PENALTY)
                unasked = [a for (q, _), a in zip(forgotten, bare) if not names_author(q)]
                bare_cells = (sum(map(names_author, unasked)) / max(len(unasked), 1), sum(map(has_loop, bare)) / len(bare))
                kind = "calibrated" if alpha == calibrated else "demo's" if alpha == demo_alpha else "chosen"
                kind += ", names checked" if alpha == calibrated and "forbidden" in manifest["calibration"] else ""
                lines.append(f"| {label} | {manifest['result']['forget_ce']:.2f} | "
                             f"{alpha:.3f} ({kind}) | {cells[0]:.3f} | {cells[1]:.3f} | {at_floor:.3f} | "
                             + " | ".join(f"{v:.2f}" for v in (*served[:5], *bare_cells)) + " |")
    lines += ["", "The README's questions (greedy, no system message):", "",
              *readme_table(target_answers, answers)]
    text = "\n".join(lines)
    print(text)
    key, heading = "sharper-forget", "A forget set trained longer: the alpha it needs"
    if args.layers or args.extra_retain:
        key, heading = "sharper-forget-levers", "The demo's forget set with tofu-mini's levers: K = 15 and names retain data"
    elif forms != ("system",) or forbidden:
        key, heading = "sharper-forget-forms", "A forget set trained longer on prompts with and without a system message"
    write_section(key, heading,
                  invocation(), text)


if __name__ == "__main__":
    main()
