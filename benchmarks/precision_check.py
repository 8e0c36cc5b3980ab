"""Is bf16 autocast training correct on this CPU? Compares one fine-tuning step of SmolLM2 on
TOFU QA under fp32 and under bf16 autocast (fp32 master weights): loss, gradient direction,
and greedy answers of the fp32 and bf16 models.

    python benchmarks/precision_check.py [--examples 8]

It also prints whether this CPU has a native bf16 path (what `--precision auto` looks at).
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uld_serve.core.models import load_model, load_tokenizer  # noqa: E402
from uld_serve.core.requests import GenerationRequest  # noqa: E402
from uld_serve.reference import UldModel  # noqa: E402
from uld_serve.core.tofu import chat_prompt_ids, load_qa  # noqa: E402
from uld_training.batching import collate, encode_pairs  # noqa: E402
from uld_training.loop import bf16_is_fast  # noqa: E402


def step(model, batch, bf16):
    model.zero_grad()
    started = time.time()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(**batch).loss
    loss.backward()
    grad = torch.cat([p.grad.flatten().double() for p in model.parameters() if p.grad is not None])
    return loss.item(), grad, time.time() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=8, help="batch size of the timed step")
    args = parser.parse_args()
    print(f"native bf16 path on this CPU: {bf16_is_fast()} (torch capability {torch.backends.cpu.get_cpu_capability()})")
    model = load_model("smollm2-135m-instruct")
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    batch = collate(encode_pairs(tokenizer, load_qa(f"tofu:forget10[:{args.examples}]")), tokenizer.pad_token_id)
    step(model, batch, False)  # warm-up
    loss32, grad32, t32 = step(model, batch, False)
    step(model, batch, True)
    loss16, grad16, t16 = step(model, batch, True)
    cosine = float(grad32 @ grad16 / (grad32.norm() * grad16.norm()))
    print(f"loss fp32 {loss32:.5f}  bf16-autocast {loss16:.5f}  relative diff {abs(loss16 - loss32) / loss32:.2e}")
    print(f"gradient cosine {cosine:.6f}  norm ratio {float(grad16.norm() / grad32.norm()):.4f}")
    print(f"fwd+bwd seconds ({args.examples} QA) fp32 {t32:.2f}  bf16-autocast {t16:.2f}  speed-up {t32 / t16:.2f}x")
    questions = [qa.question for qa in load_qa("tofu:real_authors[:8]")]
    answers = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        engine = UldModel(str(Path(model.name_or_path)), dtype=dtype)
        out = engine.generate([GenerationRequest(chat_prompt_ids(tokenizer, q), max_new_tokens=24) for q in questions])
        answers[name] = [tokenizer.decode(o, skip_special_tokens=True) for o in out]
    same = sum(a == b for a, b in zip(answers["fp32"], answers["bf16"]))
    print(f"greedy answers identical in fp32 and bf16 weights: {same}/{len(questions)}")
    for q, a, b in zip(questions[:3], answers["fp32"], answers["bf16"]):
        print(f"  Q: {q}\n    fp32: {a!r}\n    bf16: {b!r}")


if __name__ == "__main__":
    main()
