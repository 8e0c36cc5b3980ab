"""Token-level pieces every unlearning objective is built from, over answer tokens only.

`logits` are a causal LM's (B, T, V) outputs and `labels` the (B, T) answer labels
(IGNORE_INDEX on prompt and padding); position t predicts label t+1.
"""
import torch
import torch.nn.functional as F

from uld_serve.tofu import IGNORE_INDEX


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple:
    """(-log p of each next answer token (B, T-1), mask of answer positions (B, T-1))."""
    targets = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    return nll, targets != IGNORE_INDEX


def mean_nll(logits, labels) -> torch.Tensor:
    """Mean NLL over all answer tokens of the batch (what a Hugging Face model returns as .loss)."""
    nll, mask = token_nll(logits, labels)
    return nll[mask].mean()


def sequence_nll(logits, labels) -> torch.Tensor:
    """(B,) summed NLL of each answer."""
    nll, mask = token_nll(logits, labels)
    return (nll * mask).sum(-1)


def kl_to_reference(logits, reference_logits, labels) -> torch.Tensor:
    """KL(reference || model) of the next-token distributions, mean over answer positions."""
    mask = labels[:, 1:] != IGNORE_INDEX
    current = F.log_softmax(logits[:, :-1].float(), dim=-1)[mask]
    reference = F.log_softmax(reference_logits[:, :-1].float(), dim=-1)[mask]
    return F.kl_div(current, reference, reduction="batchmean", log_target=True)


def weighted_token_ascent(nll: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """-mean over answer tokens of w * NLL with w held constant: the gradient of token-wise
    ascent scaled per token (WGA, TNPO and WTNPO differ only in w)."""
    return -(weights.detach() * nll)[mask].mean()
