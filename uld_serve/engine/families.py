"""Which targets the vLLM wrapper serves: families whose decoder layer is vLLM's Llama layer
once a few config values are set (model.py builds every target from LlamaModel).

- Llama (SmolLM2, TinyLlama, Llama 2/3, ...): as is.
- Mistral: the same layer; served when its sliding window is off (`"sliding_window": null`,
  as in Mistral-7B v0.2 and later), since the Llama layer would ignore a window.
- Qwen2 (Qwen2, Qwen2.5): the Llama layer with biases on q, k and v and none on o, which
  vLLM's Llama code builds from `qkv_bias` (it does so for InternLM3); served without sliding
  window (`"use_sliding_window": false`, the default).
Anything else (Gemma's scaled embeddings and norms, Phi's layout, ...) would load into the
wrong layer and serve wrong logits, so it is refused with one sentence.
"""
from ..core.errors import UldError

OVERRIDES = {  # architecture -> hf_overrides that make vLLM's Llama layer compute it
    "LlamaForCausalLM": {},
    "MistralForCausalLM": {},
    "Qwen2ForCausalLM": {"qkv_bias": True},
}


def family_overrides(config: dict, name: str) -> dict:
    """hf_overrides for a target's config.json, or a UldError saying why it cannot be served."""
    architecture = (config.get("architectures") or ["(none)"])[0]
    if architecture not in OVERRIDES:
        raise UldError(f"target {name} is a {architecture}; the vLLM engine serves "
                       f"{', '.join(a.removesuffix('ForCausalLM') for a in OVERRIDES)} targets")
    if config.get("sliding_window") is not None and (architecture == "MistralForCausalLM" or config.get("use_sliding_window")):
        raise UldError(f"target {name} uses sliding-window attention, which the vLLM engine does not serve")
    return OVERRIDES[architecture]
