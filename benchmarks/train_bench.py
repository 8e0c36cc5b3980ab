"""Training steps at production shape with random weights: the ULD assistant against NPO.

    python benchmarks/train_bench.py                  # on a GPU: Llama-3-8B and -1B shapes, bf16
    python benchmarks/train_bench.py --shape tiny     # on the CPU (CI runs it so)

Each row times the real training code (the assistant's loss of training/assistant.py, NPO of
training/unlearn/npo.py, AdamW with bf16 autocast) on random token batches of `--seq`
tokens whose second half is the answer, 8 forget + 8 retain rows a step:
- assistant: K = 8 layers (a quarter of the depth) with LoRA r 32 on every linear;
- NPO, LoRA: LoRA r 32 on every linear of the whole target, the reference = LoRA off;
- NPO, all weights: as open-unlearning trains it, with a frozen copy as the reference
  (bf16 weights and optimizer state so that an 8B model and its copy fit one card);
- fine-tune, all weights, at the 1B shape (fp32 master weights).
Model FLOPs count the matrix products each step performs (a frozen weight's backward costs
one product, a trained weight's two; LM heads only at answer positions, as the code does),
against the card's dense bf16 rate measured in the same run (an 8192^3 matmul). The
projection multiplies the step time by the steps of ULD's forget10 assistant (10 epochs over
400 answers + 400 paraphrases, batch 8) and of NPO's 5 epochs (400 answers, batch 8).
"""
import argparse
import copy
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHAPES = {  # Llama-3 shapes (hidden, intermediate, layers, heads, KV heads, vocabulary)
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               vocab_size=128256),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               vocab_size=128256),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                 vocab_size=4096),
}
ASSISTANT_STEPS, NPO_STEPS = 10 * (800 // 8), 5 * (400 // 8)  # forget10: ULD's 10 epochs, NPO's 5


def model_for(shape: str, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(previous)
    return model


def batch(shape: str, rows: int, seq: int, device) -> dict:
    ids = torch.randint(0, SHAPES[shape]["vocab_size"], (rows, seq), device=device)
    labels = ids.clone()
    labels[:, : seq // 2] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def forward_flops(shape: str, layers: int, rows: int, seq: int) -> tuple:
    """(matrix-product FLOPs of one forward through `layers` layers, of the LM head at the
    answer positions) for rows x seq tokens (attention's two products counted causally)."""
    s = SHAPES[shape]
    h, kv = s["hidden_size"], s["hidden_size"] * s["num_key_value_heads"] // s["num_attention_heads"]
    per_token = 2 * (2 * h * h + 2 * h * kv + 3 * h * s["intermediate_size"])
    attention = 2 * 2 * seq * h / 2  # QK^T and PV, causal
    body = rows * seq * layers * (per_token + attention)
    head = rows * (seq // 2) * 2 * h * s["vocab_size"]
    return body, head


def timed(step, steps: int, device) -> float:
    for _ in range(2):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, size: int) -> float:
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    seconds = timed(lambda: a @ a, 10, device)
    return 2 * size**3 / seconds


def lora(model):
    from peft import LoraConfig, get_peft_model

    from uld_serve.core.assistant import LORA_TARGET_MODULES

    return get_peft_model(model, LoraConfig(r=32, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGET_MODULES))


def optimizer_step(params, lr, optimizer=None):
    from uld_training.loop import adamw

    optimizer = optimizer or adamw(params, lr, 0.01)

    def update():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return update


def assistant_row(args, target):
    from uld_serve.core.assistant import build_assistant
    from uld_training.assistant import uniform_cross_entropy
    from uld_training.batching import answer_logits, answer_loss

    k = SHAPES[args.shape]["num_hidden_layers"] // 4
    net = lora(build_assistant(target, k))
    lm = net.get_base_model().assistant
    params = [p for p in net.parameters() if p.requires_grad]
    forget, retain = batch(args.shape, 8, args.seq, args.device), batch(args.shape, 8, args.seq, args.device)
    update = optimizer_step(params, 1e-3)

    def step():
        with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16):
            loss = answer_loss(lm, forget) + 6.5 * uniform_cross_entropy(answer_logits(lm, retain)[0])
        loss.backward()
        update()

    seconds = timed(step, args.steps, args.device)
    body, head = forward_flops(args.shape, k, 16, args.seq)
    flops = 2 * (body + head)  # forward + the activations' backward (the weights are frozen)
    return "assistant (K = %d, LoRA r 32)" % k, seconds, 16 * args.seq, flops, ASSISTANT_STEPS


def npo_row(args, model, reference, label, passes):
    """`passes`: forward-equivalents of 8 rows a step: the policy's forward and backward on
    forget and retain (backward = 1 forward with frozen weights, 2 with trained ones) plus the
    reference's forward on forget: 2 x 2 + 1 = 5 with LoRA, 2 x 3 + 1 = 7 on all weights."""
    from uld_training.unlearn import Step, get_method

    method = get_method("npo")
    params = [p for p in model.parameters() if p.requires_grad]
    forget, retain = batch(args.shape, 8, args.seq, args.device), batch(args.shape, 8, args.seq, args.device)
    bf16_state = not any(p.dtype == torch.float32 for p in params)
    update = optimizer_step(params, 1e-5, torch.optim.AdamW(params, lr=1e-5, fused=True) if bf16_state else None)

    def step():
        with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16):
            loss = method.terms(Step(model, forget, retain, reference))["loss"]
        loss.backward()
        update()

    seconds = timed(step, args.steps, args.device)
    body, head = forward_flops(args.shape, SHAPES[args.shape]["num_hidden_layers"], 8, args.seq)
    flops = passes * (body + head)
    return label, seconds, 16 * args.seq, flops, NPO_STEPS


def finetune_row(args):
    from uld_training.batching import answer_loss

    model = model_for("1b" if args.shape != "tiny" else "tiny", args.device, torch.float32)
    model.train()
    params = list(model.parameters())
    data = batch("1b" if args.shape != "tiny" else "tiny", 8, args.seq, args.device)
    update = optimizer_step(params, 1e-5)

    def step():
        with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16):
            loss = answer_loss(model, data)
        loss.backward()
        update()

    seconds = timed(step, args.steps, args.device)
    shape = "1b" if args.shape != "tiny" else "tiny"
    body, head = forward_flops(shape, SHAPES[shape]["num_hidden_layers"], 8, args.seq)
    return f"fine-tune, all weights ({shape} shape, fp32 master)", seconds, 8 * args.seq, 3 * (body + head), None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="8b", choices=sorted(SHAPES))
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-full-npo", action="store_true", help="leave out NPO on all weights (memory)")
    args = parser.parse_args()
    from contextlib import contextmanager

    # a 1024^3 bf16 product takes seconds on a CPU without native bf16; the CPU run only proves the rows run
    peak = matmul_peak(args.device, 8192 if torch.device(args.device).type == "cuda" else 256)
    rows = []
    target = model_for(args.shape, args.device, torch.bfloat16)
    target.requires_grad_(False)
    rows.append(assistant_row(args, target))

    net = lora(target)

    @contextmanager
    def lora_off():
        with net.disable_adapter():
            yield net

    rows.append(npo_row(args, net, lora_off, "NPO, LoRA r 32 on the whole target", 5))
    net = net.unload()
    if not args.skip_full_npo:
        frozen = copy.deepcopy(target)
        target.requires_grad_(True)
        target.train()

        @contextmanager
        def original():
            yield frozen

        rows.append(npo_row(args, target, original, "NPO, all weights, frozen reference (bf16 state)", 7))
        frozen = None  # noqa: F841  (free the copy before the next row)
    target = net = None  # free the 8B model before the 1B one
    if torch.device(args.device).type == "cuda":
        torch.cuda.empty_cache()
    rows.append(finetune_row(args))

    device_name = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "CPU"
    print(f"{device_name}, {args.shape} shape, seq {args.seq}, {args.steps} timed steps; dense bf16 matmul {peak / 1e12:.1f} TFLOP/s\n")
    print("| step | ms | tokens/s | model TFLOP/s | MFU | projected forget10 training |")
    print("|---|---|---|---|---|---|")
    for label, seconds, tokens, flops, steps in rows:
        projected = f"{steps * seconds / 60:.1f} min ({steps} steps)" if steps else "-"
        print(f"| {label} | {seconds * 1e3:.1f} | {tokens / seconds:,.0f} | {flops / seconds / 1e12:.2f} | "
              f"{flops / seconds / peak:.1%} | {projected} |")
    assistant, npo_lora = rows[0], rows[1]
    epoch = {"assistant": assistant[1] * ASSISTANT_STEPS / 10, "NPO LoRA": npo_lora[1] * NPO_STEPS / 5}
    line = f"\nper epoch: assistant {epoch['assistant']:.1f} s, NPO LoRA {epoch['NPO LoRA']:.1f} s "
    line += f"({epoch['NPO LoRA'] / epoch['assistant']:.2f}x the assistant)"
    if not args.skip_full_npo:
        full = rows[2][1] * NPO_STEPS / 5
        line += f", NPO all weights {full:.1f} s ({full / epoch['assistant']:.2f}x)"
    print(line)


if __name__ == "__main__":
    main()
