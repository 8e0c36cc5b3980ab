"""The sparse assistant head: assistant logits only where the filter can keep a token.

When serving, tokens outside the target's relative-top set are excluded whatever the
assistant says, and that set holds about r x V tokens per row. So instead of the
assistant's full LM head (V x H), compute the target's candidate sets first and the
assistant's logits only on their union over the batch: one matrix product with the
gathered rows of the head (or the dense head when the union is most of the vocabulary).
Entries outside the union are 0 and must not be read (logit_difference in "serve" mode
never does).
"""
import torch

from .torch_impl import filter_union_mask


def sparse_head_logits(hidden: torch.Tensor, weight: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(N, V) fp32: hidden[n] . weight[v] for every v that is a candidate of some row, else 0."""
    cols = candidates.any(0).nonzero().squeeze(1)
    if 2 * cols.numel() > candidates.shape[1]:  # gathering most of the head costs more than all of it
        return (hidden @ weight.T).float()
    out = torch.zeros(candidates.shape, dtype=torch.float32, device=hidden.device)
    out[:, cols] = (hidden @ weight[cols].T).float()
    return out


def assistant_logits_on_candidates(target_logits, assistant_hidden, weight, r_min: float, r_max: float):
    """The assistant's logits on the union of the filter's sets for r in [r_min, r_max]."""
    vocab = target_logits.shape[-1]
    return sparse_head_logits(assistant_hidden, weight[:vocab], filter_union_mask(target_logits, r_min, r_max))
