"""The fused logit difference in Triton: no sort, no wide histogram, in one of two layouts.

The filter keeps t >= min(max t + log r, k-th largest t) (on logits, not log-probabilities:
lp = t - logsumexp(t) shifts a row by one constant, so the set is the same without the
rounding of a log-sum-exp; torch_impl.py states it the same way). Its stages:

1. max: the row's max M.
2. count: how many entries lie at or above M - d_j, for a fixed ladder of G offsets d_j
   (geometric, 1/8 to ~126 nats).
3. compact: the rung where the count first reaches k brackets the k-th largest:
   [M - d_j, M - d_(j-1)). Its few entries (at most CAP) are copied to a per-row scratch
   buffer, in order (no atomics).
4. select: the k-th largest is found among the bracketed entries by bisection on their
   integer keys (in registers), once per row. Rows whose bracket is too full or below the
   ladder (ties, flat or huge-magnitude rows) fall back to an exact radix selection over the
   whole row (8-bit digits, tl.histogram): slower, never wrong.
5. write: t - alpha * a where kept, -inf ("serve") or t ("score") elsewhere.
Rows with alpha = 0 skip steps 1-3 and are copied.

Layouts. "split": four launches (max, count, compact + select, write), each over all (row,
chunk) pairs so that small batches still fill the GPU; chunks hand their maxima, counts and
the row's threshold to the next launch through small buffers, and the select stage runs in
the last compact program of each row to finish (an arrival counter per row), so the k-th
value is found once per row without a launch of its own. "row": one launch, one program per row running every
stage, for batches with enough rows to fill the GPU by themselves (fewer launches, no
hand-over). `benchmarks/kernel_bench.py` times both on a GPU; "auto" (the default) picks one
per call by its shape (`choose_layout`).
"""
import math

import torch
import triton
import triton.language as tl

INT_MIN = tl.constexpr(-2147483648)
LADDER = 32  # rungs d_j = 0.125 * 1.25 ** j
CAP = 4096  # bracketed entries selected in registers; more go to the radix fallback
WAYS = 2  # the k-th value's search splits its range this many ways a round (a power of 2; 2 is bisection, the fastest timed: BENCHMARKS.md)
BLOCK = 1024
NUM_WARPS = 4
PROGRAMS_PER_SM = 2  # (row, chunk) programs per multiprocessor the split aims for
ROW_BLOCK = 2048  # the row layout's entries per step and warps (not tuned on a GPU yet)
ROW_WARPS = 8


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
def _signed_key(x):
    """int32 bits whose signed order is the float order."""
    bits = x.to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _radix_select(t_row, V, k, BLOCK: tl.constexpr):
    """The k-th largest entry of a row, exactly: four 8-bit digit histograms."""
    offs = tl.arange(0, BLOCK)
    bins = tl.arange(0, 256)
    prefix = tl.full((), 0, tl.int32)
    prefix_mask = tl.full((), 0, tl.int32)
    remaining = tl.full((), 0, tl.int32) + k
    for step in tl.static_range(4):
        shift = 24 - 8 * step
        hist = tl.zeros((256,), tl.int32)
        for start in range(0, V, BLOCK):
            inside = start + offs < V
            key = _order_key(tl.load(t_row + start + offs, mask=inside, other=0.0).to(tl.float32))
            hist += tl.histogram((key >> shift) & 0xFF, 256, mask=inside & ((key & prefix_mask) == prefix))
        at_or_above = tl.cumsum(hist, 0, reverse=True)  # keys whose digit is >= each bin
        chosen = tl.sum((at_or_above >= remaining).to(tl.int32), 0) - 1
        remaining -= tl.sum(tl.where(bins > chosen, hist, 0), 0)
        prefix = prefix | (chosen << shift)
        prefix_mask = prefix_mask | (tl.full((), 0xFF, tl.int32) << shift)
    return _key_to_float(prefix)


@triton.jit
def _range_max(t_row, begin, end, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    best = tl.full((BLOCK,), float("-inf"), tl.float32)
    for start in range(begin, end, BLOCK):
        best = tl.maximum(best, tl.load(t_row + start + offs, mask=start + offs < end, other=float("-inf")).to(tl.float32))
    return tl.max(best, 0)


@triton.jit
def _ladder_counts(t_row, begin, end, floors, G: tl.constexpr, BLOCK: tl.constexpr):
    """How many entries of t_row[begin:end] lie at or above each floor (one count per rung)."""
    offs = tl.arange(0, BLOCK)
    counts = tl.zeros((BLOCK, G), tl.int32)  # summed over the block once, at the end
    for start in range(begin, end, BLOCK):
        x = tl.load(t_row + start + offs, mask=start + offs < end, other=float("-inf")).to(tl.float32)
        counts += (x[:, None] >= floors[None, :]).to(tl.int32)
    return tl.sum(counts, 0)


@triton.jit
def _rung(total, row_max, ladder_ptr, k, G: tl.constexpr):
    """From a row's counts per rung, the rung that brackets its k-th largest entry:
    (lo, hi, rung, entries in [lo, hi), the k-th largest's rank among them)."""
    rungs = tl.arange(0, G)
    rung = tl.sum((total < k).to(tl.int32), 0)  # first rung reaching k (G: below the ladder)
    above = tl.sum(tl.where(rungs == rung - 1, total, 0), 0)  # entries >= hi
    entries = tl.sum(tl.where(rungs == rung, total, 0), 0) - above
    lo = row_max - tl.load(ladder_ptr + tl.minimum(rung, G - 1))
    hi = tl.where(rung > 0, row_max - tl.load(ladder_ptr + tl.maximum(rung - 1, 0)), float("inf"))
    return lo, hi, rung, entries, k - above


@triton.jit
def _compact_range(t_row, s_row, begin, end, lo, hi, offset, BLOCK: tl.constexpr):
    """Copies the entries of t_row[begin:end] in [lo, hi), in order, to s_row from offset on."""
    offs = tl.arange(0, BLOCK)
    for start in range(begin, end, BLOCK):
        x = tl.load(t_row + start + offs, mask=start + offs < end, other=float("-inf")).to(tl.float32)
        inside = (x >= lo) & (x < hi)
        tl.store(s_row + offset + tl.cumsum(inside.to(tl.int32), 0) - 1, x, mask=inside)
        offset += tl.sum(inside.to(tl.int32), 0)


@triton.jit
def _bracketed_kth(s_row, entries, lo, hi, rank, CAP: tl.constexpr, WAYS: tl.constexpr):
    """The rank-th largest of the entries compacted in s_row, in registers: a search on their
    integer keys that tests WAYS - 1 pivots a round (WAYS = 2: bisection), each round keeping
    the largest key v known to have at least rank entries >= v."""
    slots = tl.arange(0, CAP)
    valid = slots < entries
    keys = _signed_key(tl.load(s_row + slots, mask=valid, other=0.0)).to(tl.int64)
    ways = tl.arange(0, WAYS).to(tl.int64)
    low = _signed_key(lo).to(tl.int64)  # every entry is >= lo: v = low always qualifies
    high = _signed_key(hi).to(tl.int64) - 1
    while low < high:
        step = (high - low + WAYS) // WAYS  # ceil((high - low + 1) / WAYS)
        pivots = low + step * ways  # pivots[0] = low qualifies; those above high cannot
        counts = tl.sum(((keys[:, None] >= pivots[None, :]) & valid[:, None]).to(tl.int32), 0)
        low = low + step * (tl.sum((counts >= rank).to(tl.int64), 0) - 1)
        high = tl.minimum(high, low + step - 1)
    bits = low.to(tl.int32)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def _write_range(t_row, a_row, o_row, begin, end, threshold, alpha, SERVE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    for start in range(begin, end, BLOCK):
        inside = start + offs < end
        x = tl.load(t_row + start + offs, mask=inside, other=0.0).to(tl.float32)
        y = tl.load(a_row + start + offs, mask=inside, other=0.0).to(tl.float32)
        keep = (x >= threshold) & (x > float("-inf"))
        if SERVE:
            outside = tl.full((BLOCK,), float("-inf"), tl.float32)
        else:
            outside = x
        tl.store(o_row + start + offs, tl.where(keep, x - alpha * y, outside), mask=inside)


@triton.jit
def _copy_range(t_row, o_row, begin, end, BLOCK: tl.constexpr):
    """Rows without a forget set: the target's logits, nothing excluded."""
    offs = tl.arange(0, BLOCK)
    for start in range(begin, end, BLOCK):
        inside = start + offs < end
        tl.store(o_row + start + offs, tl.load(t_row + start + offs, mask=inside).to(tl.float32), mask=inside)


# The split layout: four launches over (row, chunk) programs.

@triton.jit
def _row_max(partial_max_ptr, row, S, S_POW2: tl.constexpr):
    chunks = tl.arange(0, S_POW2)
    return tl.max(tl.load(partial_max_ptr + row * S + chunks, mask=chunks < S, other=float("-inf")), 0)


@triton.jit
def _bracket(partial_max_ptr, counts_ptr, ladder_ptr, row, S, k, S_POW2: tl.constexpr, G: tl.constexpr):
    """The row's max and the rung that brackets its k-th largest entry, from every chunk's counts."""
    row_max = _row_max(partial_max_ptr, row, S, S_POW2)
    chunks = tl.arange(0, S_POW2)
    rungs = tl.arange(0, G)
    counts = tl.load(counts_ptr + (row * S + chunks[:, None]) * G + rungs[None, :], mask=(chunks < S)[:, None], other=0)
    lo, hi, rung, entries, rank = _rung(tl.sum(counts, 0), row_max, ladder_ptr, k, G)
    return row_max, lo, hi, rung, entries, rank


@triton.jit
def _max_kernel(t_ptr, alpha_ptr, stride_alpha, partial_max_ptr, V, stride_t, CHUNK, S, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    if tl.load(alpha_ptr + row * stride_alpha) == 0.0:
        return
    t_row = t_ptr + row.to(tl.int64) * stride_t
    tl.store(partial_max_ptr + row * S + chunk, _range_max(t_row, chunk * CHUNK, tl.minimum(chunk * CHUNK + CHUNK, V), BLOCK))


@triton.jit
def _count_kernel(t_ptr, alpha_ptr, stride_alpha, partial_max_ptr, ladder_ptr, counts_ptr, V, stride_t, CHUNK, S,
                  S_POW2: tl.constexpr, G: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    if tl.load(alpha_ptr + row * stride_alpha) == 0.0:
        return
    t_row = t_ptr + row.to(tl.int64) * stride_t
    rungs = tl.arange(0, G)
    floors = _row_max(partial_max_ptr, row, S, S_POW2) - tl.load(ladder_ptr + rungs)
    counts = _ladder_counts(t_row, chunk * CHUNK, tl.minimum(chunk * CHUNK + CHUNK, V), floors, G, BLOCK)
    tl.store(counts_ptr + (row * S + chunk) * G + rungs, counts)


@triton.jit
def _compact_kernel(t_ptr, alpha_ptr, stride_alpha, partial_max_ptr, ladder_ptr, counts_ptr, scratch_ptr, arrivals_ptr,
                    threshold_ptr, V, stride_t, CHUNK, S, log_r, k,
                    S_POW2: tl.constexpr, G: tl.constexpr, CAP: tl.constexpr, WAYS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    if tl.load(alpha_ptr + row * stride_alpha) == 0.0:
        return
    t_row = t_ptr + row.to(tl.int64) * stride_t
    s_row = scratch_ptr + row.to(tl.int64) * CAP
    row_max, lo, hi, rung, entries, rank = _bracket(partial_max_ptr, counts_ptr, ladder_ptr, row, S, k, S_POW2, G)
    bracketed = (rung < G) & (entries <= CAP)
    if bracketed:
        # this chunk's entries go after those of the chunks before it
        chunks = tl.arange(0, S_POW2)
        before = (chunks < chunk)
        at_lo = tl.load(counts_ptr + (row * S + chunks) * G + rung, mask=before, other=0)
        at_hi = tl.load(counts_ptr + (row * S + chunks) * G + tl.maximum(rung - 1, 0), mask=before, other=0)
        offset = tl.sum(at_lo - tl.where(rung > 0, at_hi, 0), 0)
        _compact_range(t_row, s_row, chunk * CHUNK, tl.minimum(chunk * CHUNK + CHUNK, V), lo, hi, offset, BLOCK)
    # The row's last chunk program to finish (its arrival, acquire-release, orders the others'
    # stores before its loads) finds the k-th value once for the row and resets the counter.
    tl.debug_barrier()  # every thread's compacted stores precede the arrival
    if tl.atomic_add(arrivals_ptr + row, 1) == S - 1:
        tl.debug_barrier()
        tl.store(arrivals_ptr + row, 0)
        if bracketed:
            kth = _bracketed_kth(s_row, entries, lo, hi, rank, CAP, WAYS)
        else:
            kth = _radix_select(t_row, V, k, BLOCK)
        tl.store(threshold_ptr + row, tl.minimum(row_max + log_r, kth))


@triton.jit
def _write_kernel(t_ptr, a_ptr, alpha_ptr, stride_alpha, out_ptr, threshold_ptr, V, stride_t, stride_a, stride_o, CHUNK,
                  SERVE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    t_row = t_ptr + row.to(tl.int64) * stride_t
    o_row = out_ptr + row.to(tl.int64) * stride_o
    begin, end = chunk * CHUNK, tl.minimum(chunk * CHUNK + CHUNK, V)
    alpha = tl.load(alpha_ptr + row * stride_alpha)
    if alpha == 0.0:
        _copy_range(t_row, o_row, begin, end, BLOCK)
        return
    _write_range(t_row, a_ptr + row.to(tl.int64) * stride_a, o_row, begin, end, tl.load(threshold_ptr + row), alpha, SERVE, BLOCK)


# The row layout: one launch, one program per row, every stage in it.

@triton.jit
def _row_kernel(t_ptr, a_ptr, alpha_ptr, stride_alpha, out_ptr, ladder_ptr, scratch_ptr, V, stride_t, stride_a, stride_o,
                log_r, k, SERVE: tl.constexpr, G: tl.constexpr, CAP: tl.constexpr, WAYS: tl.constexpr, BLOCK: tl.constexpr,
                COUNT_BLOCK: tl.constexpr):
    row = tl.program_id(0)
    t_row = t_ptr + row.to(tl.int64) * stride_t
    o_row = out_ptr + row.to(tl.int64) * stride_o
    alpha = tl.load(alpha_ptr + row * stride_alpha)
    if alpha == 0.0:
        _copy_range(t_row, o_row, 0, V, BLOCK)
        return
    row_max = _range_max(t_row, 0, V, BLOCK)
    total = _ladder_counts(t_row, 0, V, row_max - tl.load(ladder_ptr + tl.arange(0, G)), G, COUNT_BLOCK)
    lo, hi, rung, entries, rank = _rung(total, row_max, ladder_ptr, k, G)
    if (rung < G) & (entries <= CAP):
        s_row = scratch_ptr + row.to(tl.int64) * CAP
        _compact_range(t_row, s_row, 0, V, lo, hi, tl.full((), 0, tl.int32), BLOCK)
        tl.debug_barrier()  # the compacted entries, stored by every thread, are read by every thread
        kth = _bracketed_kth(s_row, entries, lo, hi, rank, CAP, WAYS)
    else:
        kth = _radix_select(t_row, V, k, BLOCK)
    _write_range(t_row, a_ptr + row.to(tl.int64) * stride_a, o_row, 0, V,
                 tl.minimum(row_max + log_r, kth), alpha, SERVE, BLOCK)


_LADDERS = {}
_PROGRAMS = {}
_ARRIVALS = {}


def _ladder(device):
    if device not in _LADDERS:
        _LADDERS[device] = 0.125 * 1.25 ** torch.arange(LADDER, dtype=torch.float64, device=device).float()
    return _LADDERS[device]


def _arrivals(device, rows: int) -> torch.Tensor:
    """Per-row arrival counters of the compact stage, zero between calls (the last program of
    a row resets its own), so a call needs no memset launch."""
    if device not in _ARRIVALS or _ARRIVALS[device].numel() < rows:
        _ARRIVALS[device] = torch.zeros(max(rows, 256), dtype=torch.int32, device=device)
    return _ARRIVALS[device]


def _multiprocessors(device) -> int:
    if device not in _PROGRAMS:
        _PROGRAMS[device] = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return _PROGRAMS[device]


def _programs(device):
    """How many programs keep the device busy."""
    return PROGRAMS_PER_SM * _multiprocessors(device)


ROW_MAX_SHORT_VOCAB = 65536  # between the two vocabularies timed (32000: short; 128256: long)


def choose_layout(rows: int, vocab: int, multiprocessors: int) -> str:
    """The layout for a call, from the H200 run (BENCHMARKS.md): one launch per call ("row")
    wins where a row is short, since the call is then bound by its launches, or where the rows
    alone give every multiprocessor a program; with few long rows, the split layout's
    (row, chunk) programs keep the GPU busy and win."""
    return "row" if vocab <= ROW_MAX_SHORT_VOCAB or rows >= multiprocessors else "split"


def logit_difference_triton(target_logits, assistant_logits, alpha, relative_top=0.01, mode="serve", layout="auto"):
    if layout not in ("auto", "split", "row"):
        raise ValueError(f"layout must be 'auto', 'split' or 'row', got {layout!r}")
    shape = target_logits.shape
    vocab = shape[-1]
    t = target_logits.reshape(-1, vocab)
    a = assistant_logits.reshape(-1, vocab)
    if t.stride(-1) != 1:
        t = t.contiguous()
    if a.stride(-1) != 1:
        a = a.contiguous()
    rows, device = t.shape[0], t.device
    alpha = torch.as_tensor(alpha, dtype=torch.float32, device=device)
    if alpha.dim() == 0:
        alpha = alpha.expand(rows)  # stride 0: no copy, no launch
    else:  # one alpha per leading-dimension row, broadcast over any middle dimensions
        alpha = alpha.reshape(-1, *([1] * (len(shape) - 2))).expand(*shape[:-1]).reshape(-1)
    out = torch.empty((rows, vocab), dtype=torch.float32, device=device)
    if rows == 0:
        return out.reshape(shape)
    if layout == "auto":
        layout = choose_layout(rows, vocab, _multiprocessors(device))
    k = min(vocab, max(1, int(relative_top * vocab)))
    log_r = math.log(relative_top)
    scratch = torch.empty((rows, CAP), dtype=torch.float32, device=device)
    ladder = _ladder(device)
    if layout == "row":
        _row_kernel[(rows,)](t, a, alpha, alpha.stride(0), out, ladder, scratch, vocab, t.stride(0), a.stride(0), out.stride(0),
                             log_r, k, SERVE=mode == "serve", G=LADDER, CAP=CAP, WAYS=WAYS,
                             BLOCK=ROW_BLOCK, COUNT_BLOCK=ROW_BLOCK // 4, num_warps=ROW_WARPS)
        return out.reshape(shape)
    blocks = triton.cdiv(vocab, BLOCK)
    per_row = max(1, min(blocks, triton.cdiv(_programs(device), rows)))
    chunk = triton.cdiv(blocks, per_row) * BLOCK
    chunks = triton.cdiv(vocab, chunk)
    s_pow2 = triton.next_power_of_2(chunks)
    partial_max = torch.empty((rows, chunks), dtype=torch.float32, device=device)
    counts = torch.empty((rows, chunks, LADDER), dtype=torch.int32, device=device)
    threshold = torch.empty(rows, dtype=torch.float32, device=device)
    grid, alpha_args = (rows, chunks), (alpha, alpha.stride(0))
    _max_kernel[grid](t, *alpha_args, partial_max, vocab, t.stride(0), chunk, chunks, BLOCK=BLOCK, num_warps=NUM_WARPS)
    _count_kernel[grid](t, *alpha_args, partial_max, ladder, counts, vocab, t.stride(0), chunk, chunks,
                        S_POW2=s_pow2, G=LADDER, BLOCK=BLOCK // 4, num_warps=NUM_WARPS)
    _compact_kernel[grid](t, *alpha_args, partial_max, ladder, counts, scratch, _arrivals(device, rows), threshold,
                          vocab, t.stride(0), chunk, chunks, log_r, k,
                          S_POW2=s_pow2, G=LADDER, CAP=CAP, WAYS=WAYS, BLOCK=BLOCK, num_warps=NUM_WARPS)
    _write_kernel[grid](t, a, *alpha_args, out, threshold, vocab, t.stride(0), a.stride(0), out.stride(0), chunk,
                        SERVE=mode == "serve", BLOCK=BLOCK, num_warps=NUM_WARPS)
    return out.reshape(shape)
