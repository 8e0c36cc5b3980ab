"""The ULD logits processor (vLLM V1 interface): [target | assistant] logits -> served logits.

Each request carries its alpha and filter r in SamplingParams.extra_args
(`uld_alpha`, `uld_relative_top`); a request without them gets alpha 0, i.e. exactly
the target's logits. The formula and the filter live in uld_kernels.logit_difference.
"""
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from uld_kernels import logit_difference

from ..artifact import ALPHA_RANGE

ALPHA_KEY = "uld_alpha"
RELATIVE_TOP_KEY = "uld_relative_top"
DEFAULT_RELATIVE_TOP = 0.01


def request_settings(params: SamplingParams) -> tuple:
    extra = params.extra_args or {}
    return float(extra.get(ALPHA_KEY, 0.0)), float(extra.get(RELATIVE_TOP_KEY, DEFAULT_RELATIVE_TOP))


class UldLogitsProcessor(LogitsProcessor):
    @classmethod
    def validate_params(cls, params: SamplingParams):
        extra = params.extra_args or {}
        for key in (ALPHA_KEY, RELATIVE_TOP_KEY):
            value = extra.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{key} must be a number, got {value!r}")
        alpha, relative_top = request_settings(params)
        if not ALPHA_RANGE[0] <= alpha <= ALPHA_RANGE[1]:
            raise ValueError(f"{ALPHA_KEY} must be in [{ALPHA_RANGE[0]:g}, {ALPHA_RANGE[1]:g}], got {alpha}")
        if not 0.0 < relative_top <= 1.0:
            raise ValueError(f"{RELATIVE_TOP_KEY} must be in (0, 1], got {relative_top}")
        if params.allowed_token_ids:
            raise ValueError("allowed_token_ids is not supported with decode-time unlearning")

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.vocab_size = vllm_config.model_config.get_vocab_size()
        # The sparse assistant head computed logits only for r in this range (UldEngine refuses others).
        hf_config = vllm_config.model_config.hf_config
        self.r_min, self.r_max = getattr(hf_config, "uld_relative_top_range", (0.0, 1.0))
        self.settings: dict = {}  # batch row -> (alpha, relative_top)

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.settings.pop(index, None)
        for index, params, _, _ in batch_update.added:
            alpha, relative_top = request_settings(params)
            self.settings[index] = (alpha, min(max(relative_top, self.r_min), self.r_max))
        for source, dest, direction in batch_update.moved:
            moving = self.settings.pop(source, None)
            if direction == MoveDirectionality.SWAP:
                other = self.settings.pop(dest, None)
                if other is not None:
                    self.settings[source] = other
            if moving is not None:
                self.settings[dest] = moving

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] != 2 * self.vocab_size:
            return logits  # not a ULD wrapper model: nothing to combine
        target, assistant = logits[:, : self.vocab_size], logits[:, self.vocab_size :]
        rows = logits.shape[0]
        alpha = torch.zeros(rows, dtype=torch.float32, device=logits.device)
        relative_tops = [DEFAULT_RELATIVE_TOP] * rows
        for index, (a, r) in self.settings.items():
            if index < rows:
                alpha[index], relative_tops[index] = a, r
        served = None
        for r in sorted(set(relative_tops)):
            rows_r = torch.tensor([x == r for x in relative_tops], device=logits.device)
            part = logit_difference(target, assistant, torch.where(rows_r, alpha, 0.0), r, mode="serve")
            served = part if served is None else torch.where(rows_r[:, None], part, served)
        return served
