"""The fused logit difference in Triton: one program per row, no sort.

Per row: (1) the row max, fused with the first digit histogram; (2) the k-th largest logit
by radix selection over order-preserving integer keys, each pass a histogram of one digit
restricted to the prefix found so far (three passes of 11-bit digits by default, four of
8 bits as the alternative the benchmark compares); (3) one pass that writes t - alpha * a
inside the filter and -inf ("serve") or t ("score") outside it. So t is read once per
radix pass plus once to write, a once, and the output written once.

The filter is evaluated on logits, not log-probabilities: lp = t - logsumexp(t) shifts
every entry of a row by the same amount, so `lp >= min(max lp + log r, k-th lp)` is
`t >= min(max t + log r, k-th t)` without the rounding of a log-sum-exp. The torch path
(torch_impl.py) states it the same way.
"""
import math

import torch
import triton
import triton.language as tl

INT_MIN = tl.constexpr(-2147483648)
# digit width -> the shift of each radix pass, most significant digit first (an 11-bit
# last pass overlaps the previous digit by one bit, which the prefix already fixes)
SHIFTS = {8: (24, 16, 8, 0), 11: (21, 10, 0)}


@triton.jit
def _order_key(x):
    """int32 bits whose unsigned order is the float order (radix-sort key)."""
    bits = x.to(tl.int32, bitcast=True)
    return tl.where(bits < 0, ~bits, bits ^ INT_MIN)


@triton.jit
def _key_to_float(key):
    bits = tl.where(key < 0, key ^ INT_MIN, ~key)  # key < 0: top bit set, a non-negative float
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _digit_histogram(t_row, V, prefix, prefix_mask, SHIFT: tl.constexpr, BITS: tl.constexpr,
                     WITH_MAX: tl.constexpr, BLOCK: tl.constexpr):
    """Histogram of one digit over the keys that match the prefix (and the row max if asked)."""
    offs = tl.arange(0, BLOCK)
    hist = tl.zeros((1 << BITS,), tl.int32)
    row_max = tl.full((), float("-inf"), tl.float32)
    for start in range(0, V, BLOCK):
        inside = start + offs < V
        x = tl.load(t_row + start + offs, mask=inside, other=float("-inf")).to(tl.float32)
        if WITH_MAX:
            row_max = tl.maximum(row_max, tl.max(x, 0))
        key = _order_key(x)
        digit = (key >> SHIFT) & ((1 << BITS) - 1)
        hist += tl.histogram(digit, 1 << BITS, mask=inside & ((key & prefix_mask) == prefix))
    return hist, row_max


@triton.jit
def _choose_digit(hist, prefix, prefix_mask, remaining, SHIFT: tl.constexpr, BITS: tl.constexpr):
    """The digit of the remaining-th largest key; the prefix grows by it."""
    bins = tl.arange(0, 1 << BITS)
    at_or_above = tl.cumsum(hist, 0, reverse=True)  # keys whose digit is >= each bin
    chosen = tl.sum((at_or_above >= remaining).to(tl.int32), 0) - 1
    remaining -= tl.sum(tl.where(bins > chosen, hist, 0), 0)
    digit_mask = tl.full((), (1 << BITS) - 1, tl.int32) << SHIFT  # int32, so the mask keeps its sign bit
    return (prefix & ~digit_mask) | (chosen << SHIFT), prefix_mask | digit_mask, remaining


@triton.jit
def _radix_pass(t_row, V, prefix, prefix_mask, remaining, SHIFT: tl.constexpr, BITS: tl.constexpr, BLOCK: tl.constexpr):
    hist, _ = _digit_histogram(t_row, V, prefix, prefix_mask, SHIFT, BITS, False, BLOCK)
    return _choose_digit(hist, prefix, prefix_mask, remaining, SHIFT, BITS)


@triton.jit
def _logit_difference_kernel(
    t_ptr, a_ptr, alpha_ptr, out_ptr, V, stride_t, stride_a, stride_o, log_r, k,
    SERVE: tl.constexpr, BLOCK: tl.constexpr, BITS: tl.constexpr, PASSES: tl.constexpr,
    SHIFT0: tl.constexpr, SHIFT1: tl.constexpr, SHIFT2: tl.constexpr, SHIFT3: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    t_row = t_ptr + row * stride_t
    a_row = a_ptr + row * stride_a
    o_row = out_ptr + row * stride_o
    offs = tl.arange(0, BLOCK)
    alpha = tl.load(alpha_ptr + row).to(tl.float32)
    if alpha == 0.0:  # rows without a forget set: the target's logits, nothing excluded
        for start in range(0, V, BLOCK):
            inside = start + offs < V
            tl.store(o_row + start + offs, tl.load(t_row + start + offs, mask=inside).to(tl.float32), mask=inside)
        return

    zero = tl.full((), 0, tl.int32)
    hist, row_max = _digit_histogram(t_row, V, zero, zero, SHIFT0, BITS, True, BLOCK)
    prefix, prefix_mask, remaining = _choose_digit(hist, zero, zero, zero + k, SHIFT0, BITS)
    if PASSES > 1:
        prefix, prefix_mask, remaining = _radix_pass(t_row, V, prefix, prefix_mask, remaining, SHIFT1, BITS, BLOCK)
    if PASSES > 2:
        prefix, prefix_mask, remaining = _radix_pass(t_row, V, prefix, prefix_mask, remaining, SHIFT2, BITS, BLOCK)
    if PASSES > 3:
        prefix, prefix_mask, remaining = _radix_pass(t_row, V, prefix, prefix_mask, remaining, SHIFT3, BITS, BLOCK)
    threshold = tl.minimum(row_max + log_r, _key_to_float(prefix))

    for start in range(0, V, BLOCK):
        inside = start + offs < V
        x = tl.load(t_row + start + offs, mask=inside, other=0.0).to(tl.float32)
        y = tl.load(a_row + start + offs, mask=inside, other=0.0).to(tl.float32)
        keep = (x >= threshold) & (x > float("-inf"))
        if SERVE:
            outside = tl.full((BLOCK,), float("-inf"), tl.float32)
        else:
            outside = x
        tl.store(o_row + start + offs, tl.where(keep, x - alpha * y, outside), mask=inside)


# measured on an H200 (BENCHMARKS.md): the default launch configuration
DEFAULT_CONFIG = {"block": 2048, "bits": 11, "num_warps": 8}


def logit_difference_triton(target_logits, assistant_logits, alpha, relative_top=0.01, mode="serve",
                            block=None, bits=None, num_warps=None):
    block = block or DEFAULT_CONFIG["block"]
    bits = bits or DEFAULT_CONFIG["bits"]
    num_warps = num_warps or DEFAULT_CONFIG["num_warps"]
    shape = target_logits.shape
    vocab = shape[-1]
    t = target_logits.reshape(-1, vocab)
    a = assistant_logits.reshape(-1, vocab)
    if t.stride(-1) != 1:
        t = t.contiguous()
    if a.stride(-1) != 1:
        a = a.contiguous()
    rows = t.shape[0]
    alpha = torch.as_tensor(alpha, dtype=torch.float32, device=t.device)
    if alpha.dim() == 0:
        alpha = alpha.expand(rows)
    else:  # one alpha per leading-dimension row, broadcast over any middle dimensions
        alpha = alpha.reshape(-1, *([1] * (len(shape) - 2))).expand(*shape[:-1]).reshape(-1)
    alpha = alpha.contiguous()
    out = torch.empty((rows, vocab), dtype=torch.float32, device=t.device)
    k = min(vocab, max(1, int(relative_top * vocab)))
    shifts = SHIFTS[bits] + (0,) * (4 - len(SHIFTS[bits]))
    _logit_difference_kernel[(rows,)](
        t, a, alpha, out, vocab, t.stride(0), a.stride(0), out.stride(0), math.log(relative_top), k,
        SERVE=mode == "serve", BLOCK=block, BITS=bits, PASSES=len(SHIFTS[bits]),
        SHIFT0=shifts[0], SHIFT1=shifts[1], SHIFT2=shifts[2], SHIFT3=shifts[3], num_warps=num_warps,
    )
    return out.reshape(shape)
