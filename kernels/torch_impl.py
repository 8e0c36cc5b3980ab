"""Plain-torch statement of the served formula; the reference every other path must match.

For each row b, with lp = log_softmax(t_b) and k = max(1, int(r * V)), a token keeps the
subtraction when lp >= min(max(lp) + log r, k-th largest lp) (and its target logit is
finite). Kept tokens get t - alpha_b * a. Filtered tokens get -inf ("serve") or keep t
("score", the paper's forward). Rows with alpha_b == 0 pass through unchanged.

"score_anchored" (ours, for evaluation) shifts the kept tokens by one constant per row so
that their total probability is the target's: outside the filter the target's probabilities,
inside it the target's mass for the set, shared out as the served distribution shares it.
The paper's "score" is not invariant to a constant added to an assistant row, and the
assistant's objective (cross-entropy to the uniform distribution) leaves that constant free.

lp and t differ by one constant per row, so the test is evaluated on t itself:
t >= min(max(t) + log r, k-th largest t). That is the same set without the rounding of a
log-sum-exp, and it is what the Triton kernel computes, so both give identical masks.
"""
import math

import torch


def kth_largest(t: torch.Tensor, k: int) -> torch.Tensor:
    """(B, 1): the k-th largest entry of each row of t (B, V), without a top-k over the row.

    Deal the row's first S x G entries into G >= 8k strided groups (group j: entries j, j + G,
    ...) and pick the k groups with the largest maxima; let L be the smallest of those k maxima.
    The k picked maxima are k entries >= L, so the row's k-th largest x is >= L, and every group
    whose max exceeds L is picked. If x > L, every entry >= x is in a picked group or in the
    last V - S x G < S entries, so x is the k-th largest of those; if x = L, those hold the k
    picked maxima (>= x) and, being part of the row, fewer than k entries above x, so again.
    They are about an eighth of the row, and two top-k's over an eighth cost less than one
    over the row (BENCHMARKS.md)."""
    batch, vocab = t.shape
    per_group = vocab // (8 * k)
    if per_group < 4:
        return t.topk(k, dim=-1).values[:, -1:]
    groups = vocab // per_group
    dealt = t[:, : per_group * groups].reshape(batch, per_group, groups)
    picked = dealt.amax(1).topk(k, dim=-1).indices
    candidates = dealt.gather(2, picked[:, None, :].expand(batch, per_group, k)).reshape(batch, -1)
    if per_group * groups < vocab:
        candidates = torch.cat([candidates, t[:, per_group * groups :]], dim=1)
    return candidates.topk(k, dim=-1).values[:, -1:]


def relative_top_mask(target_logits: torch.Tensor, relative_top: float) -> torch.Tensor:
    """Boolean mask (same shape as target_logits) of the tokens that keep the subtraction."""
    return filter_union_mask(target_logits, relative_top, relative_top)


def filter_union_mask(target_logits: torch.Tensor, r_min: float, r_max: float) -> torch.Tensor:
    """Tokens kept by the filter for some r in [r_min, r_max]: for every such r the threshold
    min(max t + log r, k(r)-th t) is at least min(max t + log r_min, k(r_max)-th t)."""
    t = target_logits.float()
    vocab = t.shape[-1]
    k = min(vocab, max(1, int(r_max * vocab)))
    kth = kth_largest(t.reshape(-1, vocab), k).reshape(*t.shape[:-1], 1)
    relative = t.amax(dim=-1, keepdim=True) + math.log(r_min)
    # Clamped to the lowest finite value, so that -inf entries never count as kept (one pass).
    threshold = torch.minimum(relative, kth).clamp_min(torch.finfo(t.dtype).min)
    return t >= threshold


def logit_difference_torch(target_logits, assistant_logits, alpha, relative_top=0.01, mode="serve"):
    """Works on the rows with alpha != 0 only and writes just their kept entries: the filter
    keeps about r x V tokens, so a full-width `where` would cost more than all of this."""
    shape = target_logits.shape
    target = target_logits.float().reshape(-1, shape[-1])
    assistant = assistant_logits.reshape(-1, shape[-1])
    alpha = torch.as_tensor(alpha, dtype=torch.float32, device=target.device)
    row_alpha = alpha.expand(target.shape[0]) if alpha.dim() == 0 else alpha.reshape(-1).repeat_interleave(target.shape[0] // alpha.numel())
    out = target.clone()
    active = (row_alpha != 0).nonzero().squeeze(1)
    if active.numel():
        every_row = active.numel() == target.shape[0]
        t = target if every_row else target[active]
        a = assistant if every_row else assistant[active]
        rows, cols = relative_top_mask(t, relative_top).nonzero(as_tuple=True)
        values = t[rows, cols] - row_alpha[active][rows] * a[rows, cols].float()
        if mode == "serve":
            out.index_fill_(0, active, -math.inf)
        out[active[rows], cols] = values
    return out.reshape(shape)


def anchor_to_target(target_logits, served):
    """"score_anchored" from the "serve" output: kept tokens (finite in `served`) move by the
    constant that gives them the target's total probability; the others keep the target logit."""
    target = target_logits.float()
    keep = served > -math.inf
    kept_target = torch.where(keep, target, -math.inf)
    shift = torch.logsumexp(kept_target, dim=-1, keepdim=True) - torch.logsumexp(served, dim=-1, keepdim=True)
    return torch.where(keep, served + shift, target)
