"""The ULD logits processor (vLLM V1 interface): [target | assistant] logits -> served logits.

Each request carries its alpha and filter r in SamplingParams.extra_args (keys and checks:
core/settings.py), resolved against its forget set by EngineConfig.settings before it
reaches vLLM (which also refuses an r outside a sparse head's range); a request without them
gets alpha 0, i.e. exactly the target's logits. The formula and the filter live in
uld_kernels.logit_difference.
"""
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from uld_kernels import logit_difference

from ..core.errors import UldError
from ..core.settings import DEFAULT_RELATIVE_TOP, read_extra_args


class UldLogitsProcessor(LogitsProcessor):
    @classmethod
    def validate_params(cls, params: SamplingParams):
        try:
            read_extra_args(params.extra_args)
        except UldError as e:
            raise ValueError(str(e)) from None  # vLLM answers a ValueError here with a 400
        if params.allowed_token_ids:
            raise ValueError("allowed_token_ids is not supported with decode-time unlearning")

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.vocab_size = vllm_config.model_config.get_vocab_size()
        self.settings: dict = {}  # batch row -> (alpha, relative_top)

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.settings.pop(index, None)
        for index, params, _, _ in batch_update.added:
            self.settings[index] = read_extra_args(params.extra_args)
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
