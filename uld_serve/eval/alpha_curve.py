"""Answer probabilities of target + forget set at any alpha, from one forward of each model.

The filter's kept set depends on the target's logits only, and alpha moves only the kept
tokens. So an answer token's log-probability at any alpha needs, per position, the kept
tokens' target and assistant logits (about r x V of them) and three log-sum-exps of the
target row; the full (V,) rows are dropped after the forward. For the scorings of
`uld eval tofu` (kernels/README.md), with K the kept set, S = t - alpha * a on K, and y the
answer token:
  anchored: log P(y) = lse_K(t) - lse(t) + S_y - lse_K(S)   if y is kept, else t_y - lse(t)
  paper:    log P(y) = (S_y if y is kept, else t_y) - logaddexp(lse_K(S), lse_outside K(t))
tests/test_alpha_curve.py checks both against `logit_difference` on whole rows.
"""
import math

import torch

from uld_kernels import relative_top_mask

from .scoring import SCORE_BATCH, answer_batches, mean_probability

SCORINGS = ("anchored", "paper")


class AlphaCurve:
    """Per-pair mean answer-token losses of target + forget set `name` as a function of alpha."""

    def __init__(self, model, name, pairs, batch_size=SCORE_BATCH, progress=None):
        relative_top = model.settings(name).relative_top
        self.num_pairs = len(pairs)
        self.batches = []
        for chunk, ids, mask, positions, tokens, counts, prefix in answer_batches(model.tokenizer, pairs, batch_size):
            t, a = model.score_parts(ids, mask, name, positions, prefix)
            self.batches.append((chunk, counts, _compress(t.float(), a.float(), tokens.to(t.device), relative_top)))
            if progress is not None:
                progress(len(chunk))

    def losses(self, alpha: float, scoring: str = "anchored") -> list:
        return [float(-lp.mean()) for lp in self._per_pair(alpha, scoring)]

    def token_logprobs(self, alpha: float, scoring: str = "anchored") -> list:
        """Per pair, the log-probability of each answer token before EOS (`score_pairs`'
        token_logprobs, which the min-k MIA reads)."""
        return [lp[:-1].tolist() for lp in self._per_pair(alpha, scoring)]

    def _per_pair(self, alpha: float, scoring: str) -> list:
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        out = [None] * self.num_pairs
        for chunk, counts, rows in self.batches:
            for i, lp in zip(chunk, _answer_logprobs(rows, alpha, scoring).split(counts)):
                out[i] = lp
        return out

    def mean_probability(self, alpha: float, scoring: str = "anchored") -> float:
        return mean_probability(self.losses(alpha, scoring))


def _compress(t, a, tokens, relative_top) -> dict:
    """What `_answer_logprobs` needs of the (N, V) rows: the kept tokens' logits, left-packed."""
    keep = relative_top_mask(t, relative_top)
    width = int(keep.sum(-1).max())
    order = keep.float().argsort(dim=-1, descending=True, stable=True)[:, :width]  # kept columns first
    packed_keep = keep.gather(-1, order)
    kept_t = torch.where(packed_keep, t.gather(-1, order), -math.inf)
    kept_a = torch.where(packed_keep, a.gather(-1, order), 0.0)
    slot = ((order == tokens[:, None]) & packed_keep).float().argmax(-1)
    return {
        "kept_t": kept_t, "kept_a": kept_a, "slot": slot,
        "y_kept": keep.gather(-1, tokens[:, None]).squeeze(-1),
        "t_y": t.gather(-1, tokens[:, None]).squeeze(-1),
        "lse_all": torch.logsumexp(t, -1),
        "lse_kept": torch.logsumexp(kept_t, -1),
        "lse_outside": torch.logsumexp(torch.where(keep, -math.inf, t), -1),
    }


def _answer_logprobs(rows: dict, alpha: float, scoring: str) -> torch.Tensor:
    if alpha == 0:
        return rows["t_y"] - rows["lse_all"]  # rows with alpha 0 pass through unchanged
    served = rows["kept_t"] - alpha * rows["kept_a"]
    served_y = served.gather(-1, rows["slot"][:, None]).squeeze(-1)
    lse_served = torch.logsumexp(served, -1)
    if scoring == "anchored":
        kept_lp = rows["lse_kept"] - rows["lse_all"] + served_y - lse_served
        return torch.where(rows["y_kept"], kept_lp, rows["t_y"] - rows["lse_all"])
    logit_y = torch.where(rows["y_kept"], served_y, rows["t_y"])
    return logit_y - torch.logaddexp(lse_served, rows["lse_outside"])
