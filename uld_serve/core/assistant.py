"""The ULD assistant: the target's first K decoder layers, final norm and LM head, sharing
the target's tensors (no copies); a forget set adds only LoRA deltas on those K layers."""
import copy

import torch
from torch import nn

from .errors import UldError

LORA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ASSISTANT_PREFIX = "assistant.model"  # module path of the assistant's decoder, here and in the vLLM wrapper


def default_num_layers(total_layers: int) -> int:
    """The paper used K = 8 of Llama-2-7B's 32 layers; keep that quarter of the depth."""
    return max(1, round(total_layers * 8 / 32))


def _belongs_to_assistant(name: str, num_layers: int) -> bool:
    if name.startswith("model.layers."):
        return int(name.split(".")[2]) < num_layers
    return True  # embeddings, final norm, LM head


class Assistant(nn.Module):
    """The assistant causal LM under the module path `assistant.`: the vLLM wrapper model gives
    its assistant layers the same path, so a forget set's LoRA (named
    `assistant.model.layers.{i}.*`) can only ever touch assistant modules there."""

    def __init__(self, lm):
        super().__init__()
        self.assistant = lm
        self.config = lm.config

    def forward(self, **kwargs):
        return self.assistant(**kwargs)


def build_assistant(target, num_layers: int) -> Assistant:
    """A causal LM over the target's first `num_layers` layers whose tensors are the target's own."""
    total = target.config.num_hidden_layers
    if not 1 <= num_layers <= total:
        raise UldError(f"the assistant's depth K={num_layers} must be between 1 and the target's {total} layers")
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:num_layers]
    with torch.device("meta"):
        assistant = type(target)(config)
    shared = {n: t for n, t in target.state_dict().items() if _belongs_to_assistant(n, num_layers)}
    assistant.load_state_dict(shared, assign=True, strict=True)
    assistant.model.rotary_emb = target.model.rotary_emb  # non-persistent buffers are not in state_dict
    assistant.requires_grad_(False)
    assistant.eval()
    return Assistant(assistant)
