"""Decode throughput of vLLM + ULD against plain vLLM and against the paper-style
two-model loop (our reference decoding), on SmolLM2, in one run.

    python benchmarks/engine_throughput.py [--target DIR --forget-set DIR] [--prompts 32 --tokens 128 --rounds 3]

Without --forget-set, a forget set is trained for a few steps on the target (speed does
not depend on how well it unlearns) and cached under $ULD_HOME/bench/throughput.
Prints one table; record it in BENCHMARKS.md with the machine and date.
"""
import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def timed(fn):
    started = time.time()
    out = fn()
    return out, time.time() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="smollm2-135m-instruct")
    parser.add_argument("--forget-set", type=Path, default=None)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds of the vLLM engines")
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")  # the same settings UldEngine uses
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # five engines at once; 1 GiB holds these requests

    from uld_serve.core.models import load_tokenizer, resolve_model, uld_home
    from uld_serve.core.requests import GenerationRequest
    from uld_serve.reference import UldModel
    from uld_serve.core.tofu import chat_prompt_ids, load_qa

    target = resolve_model(args.target)
    forget_set = args.forget_set
    if forget_set is None:
        from uld_training.assistant import AssistantConfig, train_assistant
        from uld_training.loop import TrainConfig

        forget_set = uld_home() / "bench" / "throughput" / f"forget10-{target.name}"
        if not forget_set.exists():
            train_assistant(str(target), "tofu:forget10", "tofu:retain90[:400]", forget_set,
                            TrainConfig(max_steps=5, lr=1e-3, batch_size=8), AssistantConfig())
    tokenizer = load_tokenizer(target)
    questions = [qa.question for qa in load_qa("tofu:forget10")][: args.prompts]
    prompts = [chat_prompt_ids(tokenizer, q) for q in questions]
    total = args.prompts * args.tokens

    def requests(forget):
        return [GenerationRequest(p, forget, max_new_tokens=args.tokens, ignore_eos=True) for p in prompts]

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from uld_serve.engine.llm import UldEngine

    plain = LLM(model=str(target), dtype="float32", max_model_len=1024, seed=0)
    params = SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)
    token_prompts = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    engine = UldEngine(target, {"forget10": forget_set}, max_model_len=1024)
    after = UldEngine(target, {"forget10": forget_set}, max_model_len=1024, stacked=False)
    sparse = UldEngine(target, {"forget10": forget_set}, max_model_len=1024, sparse_head=True)
    runs = {
        "plain vLLM (target only)": lambda: [list(o.outputs[0].token_ids) for o in plain.generate(token_prompts, params, use_tqdm=False)],
        "vLLM + ULD, stacked (every request with a forget set)": lambda: engine.generate(requests("forget10"), use_tqdm=False),
        "vLLM + ULD, assistant after the target (earlier form)": lambda: after.generate(requests("forget10"), use_tqdm=False),
        "vLLM + ULD wrapper, no forget set (assistant skipped)": lambda: engine.generate(requests(None), use_tqdm=False),
        "vLLM + ULD, stacked, sparse assistant LM head": lambda: sparse.generate(requests("forget10"), use_tqdm=False),
    }
    for run in runs.values():
        run()  # warm-up
    # Rounds interleave the engines, so that a slow spell of this shared machine hits all of them.
    seconds = {name: [] for name in runs}
    outputs = {}
    for _ in range(args.rounds):
        for name, run in runs.items():
            outputs[name], elapsed = timed(run)
            seconds[name].append(elapsed)
    plain_tokens, uld_out, after_out, none_out, sparse_out = outputs.values()
    for e in (engine, after, sparse):
        e.close()
    plain.llm_engine.engine_core.shutdown()
    plain = engine = after = sparse = runs = None  # release the engines before the reference loads
    gc.collect()
    rows = {name: statistics.median(s) for name, s in seconds.items()}
    baseline_runs = seconds["plain vLLM (target only)"]
    round_ratios = {name: statistics.median(b / x for b, x in zip(baseline_runs, s)) for name, s in seconds.items()}

    exact = None
    if not args.skip_reference:
        reference = UldModel(target, {"forget10": forget_set})
        ref_out, rows["reference: two-model loop in PyTorch (paper style)"] = timed(lambda: reference.generate(requests("forget10")))
        _, rows["reference: target only (Hugging Face style loop)"] = timed(lambda: reference.generate(requests(None)))
        exact = sum(a == b for a, b in zip(ref_out, uld_out))

    paper = rows.get("reference: two-model loop in PyTorch (paper style)")
    print(f"\n{args.prompts} prompts x {args.tokens} greedy tokens, fp32, {os.cpu_count()} cores; vLLM engines: "
          f"median of {args.rounds} interleaved rounds (vs plain vLLM: median of the per-round ratios), reference loops: one run")
    print("| engine | seconds | tokens/s | vs plain vLLM | vs paper-style loop |")
    print("|---|---|---|---|---|")
    for name, elapsed in rows.items():
        vs_plain = round_ratios.get(name, rows["plain vLLM (target only)"] / elapsed)
        vs_paper = f"{paper / elapsed:.2f}x" if paper else "n/a"
        print(f"| {name} | {elapsed:.1f} | {total / elapsed:.0f} | {vs_plain:.2f}x | {vs_paper} |")
    print(f"\nstacked and earlier forms give the same tokens: {sum(a == b for a, b in zip(uld_out, after_out))}/{len(prompts)}")
    print(f"sparse and dense assistant heads give the same tokens: {sum(a == b for a, b in zip(uld_out, sparse_out))}/{len(prompts)}")
    print(f"no-forget-set rows equal plain vLLM: {sum(a == b for a, b in zip(none_out, plain_tokens))}/{len(prompts)}")
    if exact is not None:
        print(f"vLLM + ULD equals the reference token for token: {exact}/{len(prompts)} prompts")
    manifest = json.loads((Path(forget_set) / "uld.json").read_text())
    from safetensors import safe_open

    with safe_open(str(Path(forget_set) / "adapter_model.safetensors"), "pt") as f:
        lora_params = sum(f.get_slice(k).get_shape()[0] * f.get_slice(k).get_shape()[1] for k in f.keys())
    with safe_open(str(target / "model.safetensors"), "pt") as f:
        import math

        target_params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    print(f"forget-set LoRA: {lora_params / 1e6:.2f}M parameters = {100 * lora_params / target_params:.2f}% of the target's "
          f"{target_params / 1e6:.1f}M (K={manifest['num_layers']}, r={manifest['training']['rank']}); "
          f"a copied {manifest['num_layers']}-layer assistant as in the paper would add the layers' own weights")


if __name__ == "__main__":
    main()
