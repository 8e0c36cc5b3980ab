"""Where a vLLM + ULD decode step spends its time, against the same wrapper with no forget set.

    python benchmarks/engine_breakdown.py [--target DIR --forget-set DIR] [--prompts 32 --tokens 64 --rounds 3]

Runs vLLM in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) and wraps the wrapper model's
parts in wall-clock timers: the forward, the assistant's layers, the LM heads
(compute_logits), the ULD logits processor, and the grouped LoRA products inside the
assistant layers. Rounds alternate "every request with a forget set" and "no forget set";
each part's time is the median over rounds. Uses the forget set engine_throughput.py caches.
Prints one table; record it in BENCHMARKS.md with the machine and date.
"""
import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PARTS = {  # label -> (module, class or None, function name); the target's compiled LlamaModel
    # cannot hold a timer (dynamo would trace it), so its time is the forward minus the assistant's.
    "wrapper forward (target + assistant layers)": ("uld_serve.engine.model", "UldLlamaForCausalLM", "forward"),
    "  of which assistant layers (with LoRA)": ("uld_serve.engine.model", "AssistantLayers", "forward"),
    "    of which grouped LoRA products": ("uld_serve.engine.cpu_lora", None, "gathered_products"),
    "LM heads (compute_logits)": ("uld_serve.engine.model", "UldLlamaForCausalLM", "compute_logits"),
    "ULD logits processor (filter + difference)": ("uld_serve.engine.logits", "UldLogitsProcessor", "apply"),
}


def install_timers(totals: dict) -> None:
    import importlib

    for label, (module_name, class_name, function) in PARTS.items():
        owner = importlib.import_module(module_name)
        owner = getattr(owner, class_name) if class_name else owner
        original = getattr(owner, function)

        def timed(*args, _original=original, _label=label, **kwargs):
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_label] += time.perf_counter() - started

        setattr(owner, function, timed)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="smollm2-135m-instruct")
    parser.add_argument("--forget-set", type=Path, default=None)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

    from uld_serve.core.models import load_tokenizer, resolve_model, uld_home
    from uld_serve.core.requests import GenerationRequest
    from uld_serve.core.tofu import chat_prompt_ids, load_qa

    target = resolve_model(args.target)
    forget_set = args.forget_set or uld_home() / "bench" / "throughput" / f"forget10-{target.name}"
    if not (forget_set / "uld.json").exists():
        sys.exit(f"error: no forget set at {forget_set}; run benchmarks/engine_throughput.py first or pass --forget-set")
    totals = collections.defaultdict(float)
    install_timers(totals)
    from uld_serve.engine.llm import UldEngine

    tokenizer = load_tokenizer(target)
    prompts = [chat_prompt_ids(tokenizer, qa.question) for qa in load_qa("tofu:forget10")][: args.prompts]
    engine = UldEngine(target, {"forget10": forget_set}, max_model_len=1024)
    cases = {"with a forget set": "forget10", "no forget set": None}
    measured = {case: collections.defaultdict(list) for case in cases}
    for case, forget in cases.items():
        engine.generate([GenerationRequest(p, forget, max_new_tokens=4, ignore_eos=True) for p in prompts[:2]], use_tqdm=False)
    for _ in range(args.rounds):
        for case, forget in cases.items():
            totals.clear()
            started = time.perf_counter()
            engine.generate([GenerationRequest(p, forget, max_new_tokens=args.tokens, ignore_eos=True) for p in prompts], use_tqdm=False)
            measured[case]["whole generate call"].append(time.perf_counter() - started)
            for label in PARTS:
                measured[case][label].append(totals[label])
    engine.close()
    with_fs, without = ({k: statistics.median(v) for k, v in measured[c].items()} for c in cases)
    whole = with_fs["whole generate call"]
    print(f"\n{args.prompts} prompts x {args.tokens} greedy tokens, fp32, {os.cpu_count()} cores, "
          f"median of {args.rounds} rounds (seconds per generate call)")
    print("| part | with a forget set | no forget set | share of the ULD call |")
    print("|---|---|---|---|")
    for case in (with_fs, without):
        case["  of which target layers"] = (case["wrapper forward (target + assistant layers)"]
                                           - case["  of which assistant layers (with LoRA)"])
    labels = list(PARTS)
    labels.insert(1, "  of which target layers")
    for label in ["whole generate call", *labels]:
        print(f"| {label} | {with_fs[label]:.2f} | {without[label]:.2f} | {100 * with_fs[label] / whole:.0f}% |")
    print(f"\nno forget set / with a forget set: {without['whole generate call'] / whole:.2f}x")


if __name__ == "__main__":
    main()
