"""The sparse assistant head: assistant logits only where the filter can keep a token.

When serving, tokens outside the target's relative-top set are excluded whatever the
assistant says, and that set holds about r x V tokens. So instead of the assistant's full
LM head (V x H per row), compute the target's candidate set first and the assistant's
logits only there: a gathered matrix-vector product per row. Entries outside the set are
0 and must not be read (logit_difference in "serve" mode never does).
"""
import torch

from .torch_impl import filter_union_mask


def sparse_head_logits(hidden: torch.Tensor, weight: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(N, V) fp32: hidden[n] . weight[v] where candidates[n, v], else 0."""
    out = torch.zeros(candidates.shape, dtype=torch.float32, device=hidden.device)
    for row in range(candidates.shape[0]):
        cols = candidates[row].nonzero().squeeze(1)
        out[row, cols] = (weight[cols] @ hidden[row]).float()
    return out


def assistant_logits_on_candidates(target_logits, assistant_hidden, weight, r_min: float, r_max: float):
    """The assistant's logits on the union of the filter's sets for r in [r_min, r_max]."""
    vocab = target_logits.shape[-1]
    return sparse_head_logits(assistant_hidden, weight[:vocab], filter_union_mask(target_logits, r_min, r_max))
