"""Fine-tuning throughput: length-grouped batches, an answer-only LM head and the fused AdamW
update against random batches, the model's own loss (LM head and softmax at every position)
and AdamW's per-tensor update.

Every path trains a fresh copy of the embedded model on the same tofu-mini examples (the first
--examples of an epoch's shuffle) with AdamW, the precision `--precision auto` picks, and
report seconds, answer tokens per second and the ratio.

    python benchmarks/finetune_speed.py [--examples 64] [--record]
"""
import argparse
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from uld_serve.core.models import load_model, load_tokenizer  # noqa: E402
from uld_serve.core.tofu import load_qa  # noqa: E402
from uld_training.batching import answer_loss, answer_token_count, collate, encode_pairs, grouped_batches  # noqa: E402
from uld_training.loop import adamw, resolve_precision  # noqa: E402


def per_tensor_adamw(params, lr, weight_decay):
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def train(batches, loss_of, precision, make_optimizer=adamw) -> float:
    torch.manual_seed(0)
    model = load_model("smollm2-135m-instruct")
    model.train()
    optimizer = make_optimizer(model.parameters(), lr=1e-5, weight_decay=0.01)
    started = time.perf_counter()
    for batch in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_of(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--record", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args()
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    examples = random.Random(0).sample(encode_pairs(tokenizer, load_qa("tofu-mini:target")), args.examples)
    pad, precision = tokenizer.pad_token_id, resolve_precision("auto")
    plain = [collate(examples[i : i + 8], pad) for i in range(0, len(examples), 8)]
    grouped = [collate(b, pad) for b in grouped_batches(examples, 8, random.Random(0))]
    tokens = sum(answer_token_count(b) for b in plain)
    rows = {"random batches, model's own loss, per-tensor AdamW (before)":
            train(plain, lambda m, b: m(**b).loss, precision, per_tensor_adamw),
            "length-grouped batches, answer-only LM head, per-tensor AdamW": train(grouped, answer_loss, precision, per_tensor_adamw),
            "length-grouped batches, answer-only LM head, fused AdamW (shipped)": train(grouped, answer_loss, precision)}
    base = next(iter(rows.values()))
    lines = ["| fine-tuning | padded tokens | seconds | answer tokens/s | speed-up |", "|---|---|---|---|---|"]
    for (label, seconds), batches in zip(rows.items(), (plain, grouped, grouped)):
        padded = sum(b["input_ids"].numel() for b in batches)
        lines.append(f"| {label} | {padded} | {seconds:.1f} | {tokens / seconds:.1f} | {base / seconds:.2f}x |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        from report import invocation, write_section

        write_section("finetune-speed", "Fine-tuning throughput: grouped batches, answer-only LM head, fused AdamW",
                      invocation(),
                      f"SmolLM2-135M-Instruct, {precision}, {len(examples)} tofu-mini QA in batches of 8, "
                      f"{tokens} answer tokens.\n\n{table}")


if __name__ == "__main__":
    main()
