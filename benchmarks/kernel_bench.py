"""Logit-difference kernel timings: torch eager (the reference formula), torch.compile of
it, and the Triton kernel on GPU; the torch path against a naive sort-based formula on CPU.

    python benchmarks/kernel_bench.py            # GPU if one is present, else CPU
Prints one table (time per call, effective bandwidth = bytes read + written / time).
Finishes in well under 3 minutes on one H100/H200.
"""
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uld_kernels import logit_difference  # noqa: E402
from uld_kernels.torch_impl import logit_difference_torch  # noqa: E402


def naive(t, a, alpha, r=0.01):
    """The paper's formulation: log_softmax, full sort for the k-th value, masked difference."""
    lp = torch.log_softmax(t.float(), -1)
    k = max(1, int(r * t.shape[-1]))
    kth = lp.sort(-1, descending=True).values[:, k - 1 : k]
    keep = lp >= torch.minimum(lp.max(-1, keepdim=True).values + math.log(r), kth)
    out = torch.where(keep, t.float() - alpha[:, None] * a.float(), torch.tensor(-math.inf, device=t.device))
    return torch.where(alpha[:, None] == 0, t.float(), out)


def timeit(fn, device, repeat):
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeat


def main():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    repeat = 50 if device == "cuda" else 5
    shapes = [(b, v) for v in (32000, 128256) for b in (1, 8, 64, 256)]
    dtypes = (torch.float32, torch.bfloat16)
    print(f"device: {name}, torch {torch.__version__}")
    if device == "cuda":
        compiled = torch.compile(logit_difference_torch)
        header = "| dtype | B | V | eager ms | compile ms | triton ms | triton GB/s | vs eager | vs compile |"
    else:
        header = "| dtype | B | V | naive (sort) ms | torch path ms | vs naive |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for dtype in dtypes:
        for b, v in shapes:
            t = torch.randn(b, v, device=device).to(dtype) * 3
            a = torch.randn(b, v, device=device).to(dtype)
            alpha = torch.full((b,), 0.75, device=device)
            if device == "cuda":
                eager = timeit(lambda: logit_difference_torch(t, a, alpha), device, repeat)
                comp = timeit(lambda: compiled(t, a, alpha), device, repeat)
                tri = timeit(lambda: logit_difference(t, a, alpha, impl="triton"), device, repeat)
                moved = b * v * (2 * t.element_size() + 4)
                print(f"| {str(dtype)[6:]} | {b} | {v} | {eager * 1e3:.3f} | {comp * 1e3:.3f} | {tri * 1e3:.3f} | "
                      f"{moved / tri / 1e9:.0f} | {eager / tri:.2f}x | {comp / tri:.2f}x |")
            else:
                slow = timeit(lambda: naive(t, a, alpha), device, repeat)
                fast = timeit(lambda: logit_difference(t, a, alpha, impl="torch"), device, repeat)
                print(f"| {str(dtype)[6:]} | {b} | {v} | {slow * 1e3:.2f} | {fast * 1e3:.2f} | {slow / fast:.2f}x |")


if __name__ == "__main__":
    main()
