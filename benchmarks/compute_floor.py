"""How long the tofu-mini protocol must take on this CPU at the very least: the matrix-product
FLOPs of each stage of the core loop (fine-tune the target and the retain reference, train the
paper-settings assistant, score the three evaluations) divided by the best matrix-product rate
measured here in the stage's precision (training: what `--precision auto` picks, bf16 where
this CPU runs it natively; evaluation: fp32), beside the rate a real fine-tuning step reaches.

    python benchmarks/compute_floor.py

Counts are lower bounds: real tokens only (no padding), linear layers and the LM head only
(no attention scores, norms or optimizer), 2 FLOPs per weight and token forward, 4 more
backward for trained weights, 2 for frozen ones whose inputs need gradients; greedy
generation (up to 200 tokens per question) is left out entirely.
"""
import argparse
import random
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from report import cpu_description  # noqa: E402
from uld_serve.eval.scoring import answer_batches  # noqa: E402
from uld_serve.eval.tofu_eval import _datasets, scored_pairs  # noqa: E402
from uld_serve.core.models import load_model, load_tokenizer, resolve_model  # noqa: E402
from uld_serve.core.tofu import IGNORE_INDEX, load_qa, load_split, paraphrased_pairs, perturbed_pairs  # noqa: E402
from uld_training.batching import answer_loss, collate, encode_pairs  # noqa: E402
from uld_training.loop import adamw, resolve_precision  # noqa: E402

MODEL = "smollm2-135m-instruct"
FINETUNE_EPOCHS, ASSISTANT_EPOCHS, ASSISTANT_LAYERS = 5, 10, 8  # tofu_e2e.py's FINETUNE, ASSISTANT


def sizes(config) -> tuple:
    """(weights of one decoder layer's linears, weights of the LM head)"""
    h, i = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    return 2 * h * h + 2 * h * kv + 3 * h * i, config.vocab_size * h


def tokens(examples) -> tuple:
    """(all tokens, answer tokens) of encoded (ids, labels) examples"""
    return sum(len(ids) for ids, _ in examples), sum(sum(1 for x in labels if x != IGNORE_INDEX) for _, labels in examples)


def scored_tokens(tokenizer, split="forget10") -> tuple:
    """(tokens through the layers, positions through the LM head) of one `uld eval tofu` run's scoring"""
    pairs = [pair for name, para in _datasets(split).values() for pair in scored_pairs(load_split(name), para)]
    pairs += [(r["question"], r["answer"]) for r in load_split(split.replace("forget", "holdout"))]
    layer_tokens = head_tokens = 0
    for batch in answer_batches(tokenizer, pairs):
        layer_tokens += int(batch.mask.sum()) + (int(batch.prefix.mask.sum()) if batch.prefix is not None else 0)
        head_tokens += sum(batch.counts)
    return layer_tokens, head_tokens


def matmul_rate(precision: str, rows=680) -> float:
    """Best FLOP/s of the model's linear shapes at a training batch's row count."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    best = 0.0
    for k, n in ((576, 576), (576, 1536), (1536, 576), (576, 49152)):
        x, w = torch.randn(rows, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        x @ w
        started, calls = time.perf_counter(), 0
        while time.perf_counter() - started < 1.0:
            x @ w
            calls += 1
        best = max(best, 2 * rows * k * n * calls / (time.perf_counter() - started))
    return best


def finetune_step_rate(tokenizer, layer_weights, head_weights, precision, steps=3) -> float:
    """FLOP/s a real full fine-tuning step reaches (8 tofu-mini QA per step, AdamW)."""
    examples = encode_pairs(tokenizer, load_qa("tofu-mini:target"))
    random.Random(0).shuffle(examples)
    model = load_model(MODEL)
    model.train()
    optimizer = adamw(model.parameters(), lr=1e-5, weight_decay=0.01)
    flops, elapsed = 0.0, 0.0
    for step in range(steps + 1):
        chunk = examples[8 * step : 8 * step + 8]
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = answer_loss(model, collate(chunk, tokenizer.pad_token_id))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step warms up
            elapsed += time.perf_counter() - started
            all_tokens, answer = tokens(chunk)
            flops += 6 * model.config.num_hidden_layers * layer_weights * all_tokens + 6 * head_weights * answer
    return flops / elapsed


def main():
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    precision = resolve_precision("auto")
    tokenizer = load_tokenizer(MODEL)
    config = AutoConfig.from_pretrained(resolve_model(MODEL))
    layer, head = sizes(config)
    depth = config.num_hidden_layers

    def finetune_flops(spec):
        all_tokens, answer = tokens(encode_pairs(tokenizer, load_qa(spec)))
        return FINETUNE_EPOCHS * (6 * depth * layer * all_tokens + 6 * head * answer)

    forget = load_qa("tofu:forget10")
    paraphrases = paraphrased_pairs(forget)
    forget_pool = encode_pairs(tokenizer, forget) + [encode_pairs(tokenizer, ps)[0] for ps in paraphrases.values() if ps]
    retain_pool = encode_pairs(tokenizer, load_qa("tofu:full[:400]") + perturbed_pairs(forget))
    f_all, f_answer = tokens(forget_pool)
    r_all, r_answer = tokens(retain_pool)
    scale = len(forget_pool) / len(retain_pool)  # each step draws as many retain examples as forget ones
    per_epoch_tokens, per_epoch_answer = f_all + scale * r_all, f_answer + scale * r_answer
    # frozen base weights: forward 2, input gradients 2 (the LoRA's own products are left out)
    assistant = ASSISTANT_EPOCHS * (4 * ASSISTANT_LAYERS * layer * per_epoch_tokens + 4 * head * per_epoch_answer)

    layer_tokens, head_tokens = scored_tokens(tokenizer)
    plain_eval = 2 * depth * layer * layer_tokens + 2 * head * head_tokens
    uld_eval = plain_eval + 2 * ASSISTANT_LAYERS * layer * layer_tokens + 2 * head * head_tokens

    stages = {  # name -> (FLOPs, precision)
        "fine-tune the target (tofu-mini:target, 5 epochs)": (finetune_flops("tofu-mini:target"), precision),
        "fine-tune the retain reference (tofu:full[:400], 5 epochs)": (finetune_flops("tofu:full[:400]"), precision),
        "train the forget10 assistant (K = 8, 10 epochs)": (assistant, precision),
        "score the retain reference (uld eval tofu, no generation)": (plain_eval, "fp32"),
        "score the target": (plain_eval, "fp32"),
        "score target + ULD": (uld_eval, "fp32"),
    }
    peak = {p: matmul_rate(p) for p in {precision, "fp32"}}
    step = finetune_step_rate(tokenizer, layer, head, precision)
    print(f"{cpu_description()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("best matrix-product rate at the model's shapes: "
          + ", ".join(f"{p} {rate / 1e9:.0f} GFLOP/s" for p, rate in sorted(peak.items()))
          + f"; a real {precision} fine-tuning step reached {step / 1e9:.0f} GFLOP/s ({step / peak[precision]:.0%} of it)\n")
    print("| stage | precision | TFLOP (lower bound) | minutes at the matrix-product rate |")
    print("|---|---|---|---|")
    minutes = 0.0
    for name, (flops, p) in stages.items():
        minutes += flops / peak[p] / 60
        print(f"| {name} | {p} | {flops / 1e12:.0f} | {flops / peak[p] / 60:.0f} |")
    total = sum(flops for flops, _ in stages.values())
    print(f"| **core loop, without greedy generation** | | **{total / 1e12:.0f}** | **{minutes:.0f}** |")


if __name__ == "__main__":
    main()
