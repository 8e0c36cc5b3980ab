"""One entry point, dispatching by device to the Triton kernel or the torch path."""
import torch

from .torch_impl import anchor_to_target, logit_difference_torch

MODES = ("serve", "score", "score_anchored")


def _triton_usable(tensor: torch.Tensor) -> bool:
    if not tensor.is_cuda:
        return False
    try:
        from . import triton_impl  # noqa: F401
    except ImportError:
        return False
    return True


def logit_difference(target_logits, assistant_logits, alpha, relative_top=0.01, mode="serve", impl="auto"):
    """Served logits `t - alpha * a` inside ULD's relative-top set of the target.

    target_logits, assistant_logits: (..., V) tensors (fp32, bf16 or fp16); alpha: a float
    or a tensor with one value per row of the leading dimension. Returns fp32 (..., V).
    mode "serve" gives -inf outside the filter (excluded from sampling); "score" keeps the
    target logit there (the paper's probabilities for evaluation); "score_anchored" gives the
    kept tokens the target's total probability, shared out as the served distribution does
    (kernels/README.md).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0.0 < relative_top <= 1.0:
        raise ValueError(f"relative_top must be in (0, 1], got {relative_top}")
    if target_logits.shape != assistant_logits.shape:
        raise ValueError(
            f"target and assistant logits differ in shape: {tuple(target_logits.shape)} vs {tuple(assistant_logits.shape)}"
        )
    alpha_values = torch.as_tensor(alpha)
    rows = target_logits.shape[0] if target_logits.dim() > 1 else 1
    if alpha_values.dim() and alpha_values.numel() not in (1, rows):
        raise ValueError(f"alpha needs one value per row ({rows}) or a single value, got {alpha_values.numel()}")
    if mode == "score_anchored":
        served = logit_difference(target_logits, assistant_logits, alpha, relative_top, "serve", impl)
        return anchor_to_target(target_logits, served)
    if impl == "auto":
        impl = "triton" if _triton_usable(target_logits) else "torch"
    if impl == "torch":
        return logit_difference_torch(target_logits, assistant_logits, alpha, relative_top, mode)
    if impl == "triton":
        from .triton_impl import logit_difference_triton

        return logit_difference_triton(target_logits, assistant_logits, alpha, relative_top, mode)
    raise ValueError(f"impl must be 'auto', 'torch' or 'triton', got {impl!r}")
