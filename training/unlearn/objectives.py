"""Token-level pieces every unlearning objective is built from, over answer tokens only.

`labels` are a batch's (B, T) answer labels (IGNORE_INDEX on prompt and padding); position t
predicts label t+1. `logits` are a causal LM's outputs at the answer positions only: (N, V)
rows in the order of `answer_mask(labels)`, as `batching.answer_logits` computes them (the
LM head never runs on prompt or padding positions).
"""
import torch
import torch.nn.functional as F

from ..batching import answer_mask


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple:
    """(-log p of each next answer token (B, T-1), 0 elsewhere; mask of answer positions (B, T-1))."""
    mask = answer_mask(labels)
    nll = F.cross_entropy(logits.float(), labels[:, 1:][mask], reduction="none")
    return torch.zeros(mask.shape, dtype=nll.dtype, device=nll.device).masked_scatter(mask, nll), mask


def mean_nll(logits, labels) -> torch.Tensor:
    """Mean NLL over all answer tokens of the batch (what a Hugging Face model returns as .loss)."""
    nll, mask = token_nll(logits, labels)
    return nll[mask].mean()


def sequence_nll(logits, labels) -> torch.Tensor:
    """(B,) summed NLL of each answer."""
    nll, mask = token_nll(logits, labels)
    return (nll * mask).sum(-1)


def kl_to_reference(logits, reference_logits) -> torch.Tensor:
    """KL(reference || model) of the next-token distributions, mean over answer positions."""
    current = F.log_softmax(logits.float(), dim=-1)
    reference = F.log_softmax(reference_logits.float(), dim=-1)
    return F.kl_div(current, reference, reduction="batchmean", log_target=True)


def weighted_token_ascent(nll: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """-mean over answer tokens of w * NLL with w held constant: the gradient of token-wise
    ascent scaled per token (WGA, TNPO and WTNPO differ only in w)."""
    return -(weights.detach() * nll)[mask].mean()
