"""The fused logit difference in Triton: one program per row, no sort.

Per row: (1) the row max; (2) the k-th largest logit by radix selection, four passes of
8-bit digits over order-preserving integer keys, each a 256-bin histogram restricted to
the prefix found so far; (3) one pass that writes t - alpha * a inside the filter and
-inf ("serve") or t ("score") outside it. The filter is evaluated on logits, not
log-probabilities: lp = t - logsumexp(t) shifts every entry of a row by the same amount,
so `lp >= min(max lp + log r, k-th lp)` is `t >= min(max t + log r, k-th t)` without the
rounding of a log-sum-exp. The torch path (torch_impl.py) states it the same way.
"""
import math

import torch
import triton
import triton.language as tl

INT_MIN = -2147483648


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
def _logit_difference_kernel(
    t_ptr, a_ptr, alpha_ptr, out_ptr, V, stride_t, stride_a, stride_o, log_r, k,
    SERVE: tl.constexpr, BLOCK: tl.constexpr,
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

    row_max = tl.full((), float("-inf"), tl.float32)
    for start in range(0, V, BLOCK):
        x = tl.load(t_row + start + offs, mask=start + offs < V, other=float("-inf")).to(tl.float32)
        row_max = tl.maximum(row_max, tl.max(x, 0))

    bins = tl.arange(0, 256)
    prefix = tl.full((), 0, tl.int32)
    prefix_mask = tl.full((), 0, tl.int32)
    remaining = tl.full((), 0, tl.int32) + k
    for step in tl.static_range(4):
        shift: tl.constexpr = 24 - 8 * step
        hist = tl.zeros((256,), tl.int32)
        for start in range(0, V, BLOCK):
            inside = start + offs < V
            key = _order_key(tl.load(t_row + start + offs, mask=inside, other=0.0).to(tl.float32))
            digit = (key >> shift) & 0xFF
            hist += tl.histogram(digit, 256, mask=inside & ((key & prefix_mask) == prefix))
        at_or_above = tl.cumsum(hist, 0, reverse=True)  # elements whose digit is >= each bin
        chosen = tl.sum((at_or_above >= remaining).to(tl.int32), 0) - 1
        remaining -= tl.sum(tl.where(bins > chosen, hist, 0), 0)
        prefix = prefix | (chosen << shift)
        prefix_mask = prefix_mask | (tl.full((), 0xFF, tl.int32) << shift)
    kth = _key_to_float(prefix)
    threshold = tl.minimum(row_max + log_r, kth)

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


def logit_difference_triton(target_logits, assistant_logits, alpha, relative_top=0.01, mode="serve", block=2048):
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
    _logit_difference_kernel[(rows,)](
        t, a, alpha, out, vocab, t.stride(0), a.stride(0), out.stride(0), math.log(relative_top), k,
        SERVE=mode == "serve", BLOCK=block,
    )
    return out.reshape(shape)
