"""Fused logit difference with ULD's relative-top filter (import as `uld_kernels`)."""
from .dispatch import logit_difference
from .torch_impl import relative_top_mask

__all__ = ["logit_difference", "relative_top_mask"]
