"""Logit-difference kernel timings: torch eager (the reference formula), torch.compile of
it, and the Triton kernel (both layouts) on GPU; the torch path against a naive sort-based
formula on CPU.

    python benchmarks/kernel_bench.py            # GPU if one is present, else CPU
    python benchmarks/kernel_bench.py --sweep    # also the Triton launch configurations
    python benchmarks/kernel_bench.py --profile  # also where the kernel's time goes

Prints markdown tables: time per call (CUDA events, L2 flushed before each call, via
triton.testing.do_bench), effective bandwidth = bytes the formula must read and write
(t and a once, the fp32 output once) / time, and that as a share of the card's copy
bandwidth measured in the same run. Finishes in well under 3 minutes on one H100/H200.
"""
import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uld_kernels import logit_difference  # noqa: E402
from uld_kernels.torch_impl import kth_largest, logit_difference_torch  # noqa: E402


def triton_call(t, a, alpha, layout="split"):
    from uld_kernels.triton_impl import logit_difference_triton

    return lambda: logit_difference_triton(t, a, alpha, layout=layout)


def choose_layout(rows, vocab, multiprocessors):
    from uld_kernels.triton_impl import choose_layout

    return choose_layout(rows, vocab, multiprocessors)

SHAPES = [(b, v) for v in (32000, 128256) for b in (1, 8, 64, 256)]
DTYPES = (torch.float32, torch.bfloat16)


def naive(t, a, alpha, r=0.01):
    """The paper's formulation: log_softmax, full sort for the k-th value, masked difference."""
    lp = torch.log_softmax(t.float(), -1)
    k = max(1, int(r * t.shape[-1]))
    kth = lp.sort(-1, descending=True).values[:, k - 1 : k]
    keep = lp >= torch.minimum(lp.max(-1, keepdim=True).values + math.log(r), kth)
    out = torch.where(keep, t.float() - alpha[:, None] * a.float(), torch.tensor(-math.inf, device=t.device))
    return torch.where(alpha[:, None] == 0, t.float(), out)


def inputs(b, v, dtype, device):
    g = torch.Generator(device=device).manual_seed(b * v)
    t = (torch.randn(b, v, device=device, generator=g) * 3).to(dtype)
    a = torch.randn(b, v, device=device, generator=g).to(dtype)
    return t, a, torch.full((b,), 0.75, device=device)


def moved_bytes(t):
    return t.numel() * (2 * t.element_size() + 4)


def gpu_ms(fn, rep=50):
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=rep)


def copy_bandwidth():
    """GB/s of a device-to-device copy (bytes read + written), the card's practical peak."""
    x = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    ms = gpu_ms(lambda: y.copy_(x), rep=100)
    return 2 * x.numel() * 4 / ms / 1e6


def gpu_table():
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = 64
    compiled = torch.compile(logit_difference_torch)
    peak = copy_bandwidth()
    print(f"device-to-device copy: {peak:.0f} GB/s (read + write)\n")
    print("| dtype | B | V | eager ms | compile ms | triton ms | triton GB/s | % of copy | vs eager | vs compile "
          "| row layout ms | row vs split | auto picks |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for dtype in DTYPES:
        for b, v in SHAPES:
            t, a, alpha = inputs(b, v, dtype, "cuda")
            want = torch.isinf(logit_difference_torch(t, a, alpha))
            assert torch.equal(torch.isinf(triton_call(t, a, alpha)()), want), (dtype, b, v)
            eager = gpu_ms(lambda: logit_difference_torch(t, a, alpha))
            comp = gpu_ms(lambda: compiled(t, a, alpha))
            tri = gpu_ms(triton_call(t, a, alpha, "split"))
            rate = moved_bytes(t) / tri / 1e6
            print(f"| {str(dtype)[6:]} | {b} | {v} | {eager:.4f} | {comp:.4f} | {tri:.4f} | {rate:.0f} | "
                  f"{100 * rate / peak:.0f}% | {eager / tri:.2f}x | {comp / tri:.2f}x | {row_cells(t, a, alpha, want, tri)} "
                  f"| {choose_layout(b, v, torch.cuda.get_device_properties(0).multi_processor_count)} |",
                  flush=True)


def row_cells(t, a, alpha, want, split_ms):
    """The row layout's time and its ratio to the split layout's, or why it has none."""
    try:  # its first run on a GPU: a failure must not cost the rest of the table
        if not torch.equal(torch.isinf(triton_call(t, a, alpha, "row")()), want):
            return "mask differs | "
        row = gpu_ms(triton_call(t, a, alpha, "row"))
    except Exception as error:
        return f"failed: {type(error).__name__} | "
    return f"{row:.4f} | {split_ms / row:.2f}x"


def sweep_table(title, names, configs, batches, layout):
    """GB/s at V = 128256 for each setting of triton_impl's module constants `names`."""
    from uld_kernels import triton_impl

    print(f"\n{title}, {' / '.join(names)} (GB/s, V = 128256):\n")
    print("| dtype | B | " + " | ".join(" / ".join(map(str, config)) for config in configs) + " |")
    print("|---|---|" + "---|" * len(configs))
    default = [getattr(triton_impl, name) for name in names]
    for dtype in DTYPES:
        for b in batches:
            t, a, alpha = inputs(b, 128256, dtype, "cuda")
            cells = []
            for config in configs:
                for name, value in zip(names, config):
                    setattr(triton_impl, name, value)
                ms = gpu_ms(triton_call(t, a, alpha, layout), rep=20)
                cells.append(f"{moved_bytes(t) / ms / 1e6:.0f}")
            print(f"| {str(dtype)[6:]} | {b} | " + " | ".join(cells) + " |", flush=True)
    for name, value in zip(names, default):
        setattr(triton_impl, name, value)


def gpu_sweep():
    sweep_table("Split layout launch configurations", ("BLOCK", "NUM_WARPS", "PROGRAMS_PER_SM"),
                list(itertools.product((1024, 2048), (4, 8), (2, 8, 32))), (1, 8, 64, 256), "split")
    sweep_table("The k-th value's search, split layout", ("WAYS",), [(2,), (4,), (8,), (16,)], (1, 8, 64, 256), "split")
    sweep_table("Row layout (one program per row)", ("ROW_BLOCK", "ROW_WARPS", "WAYS"),
                list(itertools.product((1024, 2048, 4096), (4, 8), (2, 16))), (64, 256, 1024), "row")


def kernel_us(fn, calls=20):
    """GPU microseconds per call of each kernel fn launches, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    totals = {}
    for event in prof.key_averages():
        us = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if us:
            totals[event.key] = us / calls
    return totals


def call_and_graph_ms(call):
    """ms per call as served, and as a CUDA-graph replay of the same launches (no host overhead)."""
    call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    return gpu_ms(call), gpu_ms(graph.replay)


def gpu_profile():
    """Where a call's time goes: host-side launching (the call against a CUDA-graph replay
    of it) and each of the split layout's four kernels (GPU time from torch.profiler)."""
    stages = ("_max_kernel", "_count_kernel", "_compact_kernel", "_write_kernel")
    print("\nWhere the Triton kernel's time goes (call: as served; graph: the same launches replayed"
          " from a CUDA graph, so without host overhead; stage columns: GPU us per call of the split"
          " layout's kernels; row: the row layout's one launch):\n")
    print("| dtype | B | V | call ms | graph ms | " + " | ".join(f"{s[1:-7]} us" for s in stages)
          + " | other us | row call ms | row graph ms |")
    print("|---|---|---|---|---|" + "---|" * (len(stages) + 3))
    for dtype in DTYPES:
        for b, v in SHAPES:
            t, a, alpha = inputs(b, v, dtype, "cuda")
            call_ms, graph_ms = call_and_graph_ms(triton_call(t, a, alpha))
            per_kernel = kernel_us(triton_call(t, a, alpha))
            cells = [per_kernel.pop(stage, 0.0) for stage in stages]
            row_ms, row_graph_ms = call_and_graph_ms(triton_call(t, a, alpha, "row"))
            print(f"| {str(dtype)[6:]} | {b} | {v} | {call_ms:.4f} | {graph_ms:.4f} | "
                  + " | ".join(f"{us:.1f}" for us in cells)
                  + f" | {sum(per_kernel.values()):.1f} | {row_ms:.4f} | {row_graph_ms:.4f} |", flush=True)


def cpu_ms(fn, repeat=5):
    fn()
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat * 1e3


def cpu_table():
    print(f"CPU ({torch.get_num_threads()} threads), torch {torch.__version__}\n")
    print("| dtype | B | V | naive (sort) ms | torch path ms | vs naive |")
    print("|---|---|---|---|---|---|")
    for dtype in DTYPES:
        for b, v in SHAPES:
            t, a, alpha = inputs(b, v, dtype, "cpu")
            slow = cpu_ms(lambda: naive(t, a, alpha))
            fast = cpu_ms(lambda: logit_difference(t, a, alpha, impl="torch"))
            print(f"| {str(dtype)[6:]} | {b} | {v} | {slow:.2f} | {fast:.2f} | {slow / fast:.2f}x |", flush=True)


def kth_table(device, ms):
    """The filter's k-th largest value (r = 0.01) on fp32 rows: a top-k over the whole row
    against the group maxima of `kth_largest` (the torch path, which the sparse head's
    candidate mask also uses)."""
    print("\n| B | V | top-k ms | group maxima ms | speed-up |")
    print("|---|---|---|---|---|")
    for b, v in SHAPES + [(32, 49152)]:
        t = inputs(b, v, torch.float32, device)[0]
        k = int(0.01 * v)
        full = ms(lambda: t.topk(k, dim=-1).values[:, -1:])
        grouped = ms(lambda: kth_largest(t, k))
        print(f"| {b} | {v} | {full:.3f} | {grouped:.3f} | {full / grouped:.2f}x |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also time the Triton launch configurations (GPU)")
    parser.add_argument("--profile", action="store_true", help="also split the Triton kernel's time by stage (GPU)")
    args = parser.parse_args()
    started = time.time()
    if torch.cuda.is_available():
        import triton

        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
        gpu_table()
        if args.profile:
            try:
                gpu_profile()
            except Exception as error:  # first run on a GPU: keep the sweep's minutes if it fails
                print(f"\nprofile failed: {type(error).__name__}: {error}")
        kth_table("cuda", gpu_ms)
        if args.sweep:
            gpu_sweep()
    else:
        cpu_table()
        kth_table("cpu", cpu_ms)
    print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
