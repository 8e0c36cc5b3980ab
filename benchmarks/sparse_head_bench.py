"""The assistant's LM head at decode: dense (every vocabulary row) against sparse (the
filter's candidates only, uld_kernels.sparse_head, the candidate mask's cost included).

    python benchmarks/sparse_head_bench.py       # GPU if one is present, else CPU

Shapes: SmolLM2-135M (H 576, V 49152) and Llama-3-8B (H 4096, V 128256), N decode rows.
Random weights; target logits drawn peaked (N(0, 4^2)), so the filter keeps about r x V
candidates per row, as it does on a language model's logits.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel_bench import cpu_ms, gpu_ms  # noqa: E402
from uld_kernels.sparse_head import assistant_logits_on_candidates  # noqa: E402

MODELS = {"SmolLM2-135M": (576, 49152), "Llama-3-8B": (4096, 128256)}


def timed_ms(fn, device):
    return gpu_ms(fn) if device == "cuda" else cpu_ms(fn, repeat=3)


def main():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}, weights {str(dtype)[6:]}, r = 0.01\n")
    print("| model | N | dense head ms | sparse head ms | sparse vs dense |")
    print("|---|---|---|---|---|")
    for model, (hidden_size, vocab) in MODELS.items():
        if device == "cpu" and model != "SmolLM2-135M":
            continue
        weight = torch.randn(vocab, hidden_size, device=device, dtype=dtype) / hidden_size ** 0.5
        for n in (1, 8, 64, 256):
            hidden = torch.randn(n, hidden_size, device=device, dtype=dtype)
            # peaked like a language model's logits: the filter keeps its k = r x V floor
            target = torch.randn(n, vocab, device=device, generator=torch.Generator(device).manual_seed(n)) * 4
            dense = timed_ms(lambda: hidden @ weight.T, device)
            sparse = timed_ms(lambda: assistant_logits_on_candidates(target, hidden, weight, 0.01, 0.01), device)
            print(f"| {model} | {n} | {dense:.4f} | {sparse:.4f} | {dense / sparse:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
