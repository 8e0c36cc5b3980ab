"""The ULD wrapper model for vLLM: a Llama-layer target plus its assistant, in one model
(families.py: which targets that covers).

The assistant is the target's first K decoder layers, final norm and LM head. Its layers
are separate vLLM modules (under `assistant.model.layers.{i}`, so a forget set's LoRA
names only them and vLLM pages their KV cache like any other layer) whose parameters
are the target's own tensors. `forward` returns [target hidden | assistant hidden] and
`compute_logits` returns [target logits | assistant logits] (2V wide); the ULD logits
processor (logits.py) turns that into the served V logits with each request's alpha.

Stacked form (the default): decoding reads weights, and the assistant's K layers have the
target's first K layers' weights, so layers 0..K-1 run both row sets at once. The step's N
target rows and N assistant rows are stacked into 2N rows; norms, rotary embedding and
each projection's product run once over the 2N rows (one read of the shared weight); each
half's LoRA delta is added to its own rows by its own LoRA module (the forget set's LoRA
on the assistant's rows only, a weight-level set's on the target's rows only), since vLLM's
per-token adapter mapping covers N rows. Attention is the one part that runs per half: the
target's rows go through the target layer's attention module and the assistant's through
the assistant layer's, each a separate vLLM `Attention` with its own paged KV cache, so
the halves never read each other's keys and values. After layer K-1 the target's rows
continue through layers K..L-1 (the compiled LlamaModel, started at layer K) and the
assistant's rows take the final norm; one LM head call could then cover both halves. With
`stacked` off, the assistant's layers run after the whole target (the earlier form, kept
for the step benchmark).

With the sparse head (core.settings.EngineOverrides), the assistant's LM head is sparse: logits only where the target's
filter can keep a token, for any r in the engine's relative_top range; the
processor never reads the rest (uld_kernels.sparse_head). With tensor parallelism the head
stays dense.

vLLM compiles the target's LlamaModel (on CPU too, when every forget set is a ULD one:
plugin.py); the layers that carry LoRA run eagerly (in the stacked form, the first K).

A step in which no request has a forget set skips the assistant: it returns the target's
hidden states alone, so logits are V wide and the processor passes them through. Those
requests never read assistant KV, and prefix-cache keys include the LoRA, so a request
with a forget set never reuses blocks whose assistant KV was skipped.
"""
from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size, tensor_model_parallel_all_reduce
from vllm.lora.layers.base_linear import BaseLinearLayerWithLoRA
from vllm.model_executor.layers.linear import RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
from vllm.model_executor.models.interfaces import SupportsLoRA
from vllm.model_executor.models.llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaModel
from vllm.model_executor.models.utils import AutoWeightsLoader

from uld_kernels.sparse_head import assistant_logits_on_candidates

from ..core.assistant import ASSISTANT_PREFIX
from ..core.settings import read_overrides
from .stacking import stacked_layer


def _tie_parameters(module: nn.Module, source: nn.Module) -> None:
    """Make every parameter of `module` the very Parameter object of `source` (no copy)."""
    for name, _ in list(module.named_parameters(recurse=False)):
        setattr(module, name, getattr(source, name))
    for (name, child), (_, twin) in zip(module.named_children(), source.named_children()):
        _tie_parameters(child, twin)


def _product(target_linear, assistant_linear, x: torch.Tensor, n: int) -> torch.Tensor:
    """One linear over stacked rows [target (n) | assistant]: the shared weight's product once
    over all rows, then each half's LoRA delta from its own LoRA module, if it has one. Mirrors
    vLLM's LoRA linear forward (bias, and a row-parallel layer's all-reduce after the deltas)."""
    base = getattr(assistant_linear, "base_layer", assistant_linear)
    row_parallel = isinstance(base, RowParallelLinear)
    tp_rank = getattr(base, "tp_rank", 0)
    bias = None if base.skip_bias_add or (row_parallel and tp_rank > 0) else base.bias
    out = base.quant_method.apply(base, x, bias)
    for rows, linear in ((slice(None, n), target_linear), (slice(n, None), assistant_linear)):
        if isinstance(linear, BaseLinearLayerWithLoRA):
            part = out[rows]
            added = linear._apply_lora_to_output(x[rows], part)
            if added.data_ptr() != part.data_ptr():
                part.copy_(added)
    if row_parallel and base.reduce_results and base.tp_size > 1:
        out = tensor_model_parallel_all_reduce(out)
    return out


class AssistantLayers(nn.Module):
    """The assistant's K decoder layers, sharing tensors with the target's first K."""

    def __init__(self, vllm_config: VllmConfig, target: LlamaModel, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(vllm_config=vllm_config, prefix=f"{ASSISTANT_PREFIX}.layers.{i}") for i in range(num_layers)
        )
        for mine, theirs in zip(self.layers, target.layers):
            _tie_parameters(mine, theirs)

    def forward(self, hidden_states, positions, final_norm):
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, residual)
        hidden_states, _ = final_norm(hidden_states, residual)
        return hidden_states


class AssistantModel(nn.Module):
    def __init__(self, vllm_config: VllmConfig, target: LlamaModel, num_layers: int):
        super().__init__()
        self.model = AssistantLayers(vllm_config, target, num_layers)


class UldLlamaForCausalLM(nn.Module, SupportsLoRA):
    packed_modules_mapping = LlamaForCausalLM.packed_modules_mapping
    embedding_modules = {}

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        overrides = read_overrides(config)
        self.num_assistant_layers = overrides.assistant_layers
        if not 1 <= self.num_assistant_layers <= config.num_hidden_layers:
            raise ValueError(
                f"uld_assistant_layers must be in [1, {config.num_hidden_layers}], got {self.num_assistant_layers}"
            )
        self.model = LlamaModel(vllm_config=vllm_config, prefix="model")
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, quant_config=vllm_config.quant_config, prefix="lm_head")
        if config.tie_word_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(config.vocab_size, scale=getattr(config, "logit_scale", 1.0))
        self.relative_top_range = overrides.relative_top_range
        self.sparse_head = (
            overrides.sparse_head
            and get_tensor_model_parallel_world_size() == 1
            and getattr(config, "logit_scale", 1.0) == 1.0
        )
        self.assistant = AssistantModel(vllm_config, self.model, self.num_assistant_layers)
        self.stacked = overrides.stacked
        if self.stacked:  # layers 0..K-1 run here (forward); the compiled LlamaModel starts at layer K
            self.model.start_layer = self.num_assistant_layers
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def _assistant_needed(self) -> bool:
        punica = getattr(self.assistant.model.layers[0].self_attn.qkv_proj, "punica_wrapper", None)
        if punica is None or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
            return True  # no LoRA machinery, or a CUDA graph that must not depend on data
        return bool((punica.token_lora_indices >= 0).any())

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None):
        if inputs_embeds is None:
            inputs_embeds = self.model.embed_input_ids(input_ids)
        if self.stacked:
            return self._stacked_forward(positions, inputs_embeds)
        target_hidden = self.model(None, positions, intermediate_tensors, inputs_embeds)
        if not self._assistant_needed():
            return target_hidden
        assistant_hidden = self.assistant.model(inputs_embeds, positions, self.model.norm)
        return torch.cat([target_hidden, assistant_hidden], dim=-1)

    def _stacked_forward(self, positions, inputs_embeds):
        k, n = self.num_assistant_layers, inputs_embeds.shape[0]
        heads = self.model.layers[:k]
        x, residual = inputs_embeds, None
        if not self._assistant_needed():
            for layer in heads:
                x, residual = layer(positions, x, residual)
            return self.model(None, positions, None, x + residual)
        x, both = torch.cat([x, x]), torch.cat([positions, positions])
        for layer, twin in zip(heads, self.assistant.model.layers):
            x, residual = stacked_layer(layer, twin, both, x, residual, n, _product)
        # Layer K's input norm adds the residual itself when it is handed none, so the target's
        # rows re-enter the compiled model as one stream (x + residual), as vLLM's layers pass it.
        target_hidden = self.model(None, positions, None, x[:n] + residual[:n])
        assistant_hidden, _ = self.model.norm(x[n:], residual[n:])
        return torch.cat([target_hidden, assistant_hidden], dim=-1)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.shape[-1] == self.config.hidden_size:
            return self.logits_processor(self.lm_head, hidden_states)
        target_hidden, assistant_hidden = hidden_states.chunk(2, dim=-1)
        target = self.logits_processor(self.lm_head, target_hidden)
        if self.sparse_head:
            assistant = assistant_logits_on_candidates(target, assistant_hidden, self.lm_head.weight, *self.relative_top_range)
        else:
            assistant = self.logits_processor(self.lm_head, assistant_hidden)
        return torch.cat([target, assistant.to(target.dtype)], dim=-1)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # The assistant's parameters are the target's objects, so loading the target loads both.
        return AutoWeightsLoader(self).load_weights(weights)
