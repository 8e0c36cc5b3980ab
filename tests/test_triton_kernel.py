"""The Triton kernel, run by Triton's interpreter on the CPU, against the torch path and
against a sort-based statement of the filter.

    ULD_TEST_DEVICE=cuda pytest tests/test_triton_kernel.py   # the compiled kernel on a GPU
"""
import math
import os

DEVICE = os.environ.get("ULD_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernel module is imported

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from uld_kernels import logit_difference  # noqa: E402
from uld_kernels import triton_impl  # noqa: E402

if DEVICE == "cpu":
    triton_impl.BLOCK = triton_impl.ROW_BLOCK = 8192  # fewer, wider blocks: the interpreter's cost is per operation

from helpers import brute_force_mask  # noqa: E402


def adversarial_rows(vocab, rows, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(rows, vocab, generator=g) * 4
    kinds = ["random", "ties", "equal", "neg_inf", "huge", "peaked"]
    for b in range(rows):
        kind = kinds[b % len(kinds)]
        if kind == "ties":  # many exact copies of the value at the k-th position
            kth = t[b].topk(max(1, int(0.01 * vocab))).values[-1].clone()
            t[b, torch.randperm(vocab, generator=g)[: vocab // 20]] = kth
        elif kind == "equal":
            t[b] = 1.5
        elif kind == "neg_inf":
            t[b, torch.rand(vocab, generator=g) < 0.99] = -math.inf
        elif kind == "huge":
            t[b] *= 1e4
        elif kind == "peaked":
            t[b, 7] = 50.0
    return t, torch.randn(rows, vocab, generator=g) * 2


def check(t, a, alpha, r=0.01):
    """Both layouts of the kernel against the torch path (values) and the sort-based filter (masks)."""
    t, a, alpha = t.to(DEVICE), a.to(DEVICE), torch.as_tensor(alpha).to(DEVICE)
    alpha_rows = alpha.cpu().expand(t.shape[0])
    for layout in ("split", "row"):
        for mode in ("serve", "score"):
            want = logit_difference(t, a, alpha, r, mode, impl="torch")
            got = triton_impl.logit_difference_triton(t, a, alpha, r, mode, layout)
            assert got.dtype == torch.float32
            assert torch.equal(torch.isinf(got), torch.isinf(want)), (layout, mode)  # identical masks
            finite = torch.isfinite(want)
            assert torch.allclose(got[finite], want[finite], rtol=1e-6, atol=1e-6), (layout, mode)
            if mode == "serve":
                for b in range(t.shape[0]):
                    if alpha_rows[b] != 0:
                        assert torch.equal(torch.isfinite(got[b]).cpu(), brute_force_mask(t[b].cpu().float(), r)), (layout, b)


@pytest.mark.parametrize("vocab", [32000, 49152, 128256, 151936])
def test_vocabularies(vocab):
    t, a = adversarial_rows(vocab, 6, vocab)
    check(t, a, torch.tensor([1.0, 0.5, 2.0, 1.0, 0.75, 3.0]))


# 256 rows on a GPU only: the interpreter runs programs one after another, so on the CPU it
# repeats what 64 rows check, at four times the cost
@pytest.mark.parametrize("rows", [1, 7, 64] + ([256] if DEVICE != "cpu" else []))
def test_batch_sizes(rows):
    t, a = adversarial_rows(3000, rows, rows)  # 3000: not a multiple of the block
    alpha = torch.rand(rows, generator=torch.Generator().manual_seed(rows)) * 2
    alpha[::5] = 0.0
    check(t, a, alpha)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    t, a = adversarial_rows(5000, 6, 1)
    t = torch.where(torch.isinf(t), t, t.clamp(-6e4, 6e4))
    check(t.to(dtype), a.to(dtype), torch.tensor(0.75))


@pytest.mark.parametrize("r", [0.001, 0.1, 0.5, 1.0])
def test_other_filter_widths(r):
    t, a = adversarial_rows(2048, 6, 3)
    check(t, a, torch.tensor(1.0), r)


@pytest.mark.parametrize("layout", ["split", "row"])
def test_alpha_zero_rows_are_untouched(layout):
    t, a = adversarial_rows(1000, 6, 4)
    out = triton_impl.logit_difference_triton(t.to(DEVICE), a.to(DEVICE), torch.zeros(6, device=DEVICE), 0.01, "serve", layout)
    assert torch.equal(out.cpu(), t)


def test_sequences_take_per_sequence_alpha():
    t, a = torch.randn(2, 3, 500, device=DEVICE), torch.randn(2, 3, 500, device=DEVICE)
    alpha = torch.tensor([0.0, 1.0], device=DEVICE)
    for mode in ("score", "score_anchored"):
        assert torch.equal(logit_difference(t, a, alpha, 0.05, mode, impl="triton"),
                           logit_difference(t, a, alpha, 0.05, mode, impl="torch")), mode


def test_radix_fallback_when_the_bracket_overflows(monkeypatch):
    monkeypatch.setattr(triton_impl, "CAP", 16)  # every row's bracket holds more: all take the fallback
    t, a = adversarial_rows(4000, 6, 5)
    check(t, a, torch.tensor(1.0))


def test_rows_split_across_many_programs(monkeypatch):
    monkeypatch.setattr(triton_impl, "BLOCK", 256)  # 20 chunks per row: offsets of the compaction matter
    monkeypatch.setattr(triton_impl, "ROW_BLOCK", 256)  # and 20 steps of the row layout's compaction
    t, a = adversarial_rows(5000, 6, 6)
    check(t, a, torch.tensor([1.0, 0.0, 2.0, 1.0, 0.75, 3.0]))


@pytest.mark.parametrize("ways", [4, 8, 16])
def test_k_th_value_search_splitting_many_ways(monkeypatch, ways):
    monkeypatch.setattr(triton_impl, "WAYS", ways)  # the benchmark's alternatives to bisection
    t, a = adversarial_rows(6000, 6, 9)
    check(t, a, torch.tensor([1.0, 0.5, 2.0, 1.0, 0.75, 3.0]))


def test_auto_layout_follows_the_h200_measurements():
    """BENCHMARKS.md (H200, 132 multiprocessors): "row" won at V = 32000 for every B timed and at
    B = 256 with V = 128256; "split" won at B <= 64 with V = 128256."""
    picks = {(b, v): triton_impl.choose_layout(b, v, 132) for v in (32000, 128256) for b in (1, 8, 64, 256)}
    assert picks == {(1, 32000): "row", (8, 32000): "row", (64, 32000): "row", (256, 32000): "row",
                     (1, 128256): "split", (8, 128256): "split", (64, 128256): "split", (256, 128256): "row"}
