"""What vLLM must be told to serve a target with a set of forget sets: one place for the
offline engine (llm.py) and the OpenAI server (server/), so both run the same model."""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..core.settings import (DEFAULT_RELATIVE_TOP, RELATIVE_TOP_RANGE, EngineOverrides, Settings, check_range,
                             manifest_defaults, resolve)
from ..core.artifact import ForgetSet, find_forget_set, load_forget_set
from ..core.assistant import ASSISTANT_PREFIX, default_num_layers
from ..core.errors import UldError
from ..core.models import fingerprint, resolve_model
from .families import family_overrides
from .plugin import ARCHITECTURE

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


@dataclass
class EngineConfig:
    target_dir: Path
    target_fingerprint: str
    target_layers: int
    target_overrides: dict  # hf_overrides that make vLLM's Llama layer serve the target's family (families.py)
    forget_sets: dict  # name -> ForgetSet
    num_assistant_layers: int
    relative_top_range: tuple
    sparse_head: bool
    weight_level: bool  # the target's own linears carry LoRA too (weight-level forget sets)
    max_lora_rank: int
    max_loras: int
    stacked: bool = True  # the assistant's layers share products with the target's first K (model.py)

    @classmethod
    def build(cls, target_dir, forget_sets: Optional[dict] = None, *, sparse_head: bool = False,
              relative_top_range: Optional[tuple] = None, weight_level: bool = False,
              min_lora_rank: int = 8, max_loras: Optional[int] = None, stacked: bool = True) -> "EngineConfig":
        """forget_sets: name -> artifact directory. sparse_head: compute the assistant's LM head
        only where the filter can keep a token for some r in relative_top_range (default: the
        forget sets' manifest values) and refuse requests outside it; with the dense head any
        r in (0, 1] is served. weight_level: accept weight-level forget sets even if none is
        given now (their LoRA makes the target's layers LoRA layers, a slower path). stacked:
        False runs the assistant after the whole target (the earlier form, for benchmarks)."""
        target_dir = resolve_model(str(target_dir))
        target_fingerprint = fingerprint(target_dir)
        sets = {name: load_forget_set(name, path, target_fingerprint) for name, path in (forget_sets or {}).items()}
        assistant_sets = [fs for fs in sets.values() if not fs.is_weight_level]
        depths = {fs.num_layers for fs in assistant_sets}
        if len(depths) > 1:
            raise UldError(f"forget sets of different assistant depths {sorted(depths)} cannot be served together")
        target_config = json.loads((target_dir / "config.json").read_text())
        overrides = family_overrides(target_config, str(target_dir))
        target_layers = target_config["num_hidden_layers"]
        defaults = [manifest_defaults(fs.manifest)[1] for fs in assistant_sets] or [DEFAULT_RELATIVE_TOP]
        widest = (min(defaults), max(defaults)) if sparse_head else RELATIVE_TOP_RANGE
        low, high = check_range(*(relative_top_range or widest))
        needed = max([min_lora_rank] + [fs.lora_rank for fs in sets.values()])
        config = cls(
            target_dir=target_dir, target_fingerprint=target_fingerprint, target_layers=target_layers,
            target_overrides=overrides, forget_sets=sets,
            num_assistant_layers=depths.pop() if depths else default_num_layers(target_layers),
            relative_top_range=(low, high), sparse_head=sparse_head,
            weight_level=weight_level or any(fs.is_weight_level for fs in sets.values()),
            max_lora_rank=next((r for r in LORA_RANKS if r >= needed), LORA_RANKS[-1]),
            max_loras=max_loras or max(1, len(sets)), stacked=stacked,
        )
        for fs in sets.values():
            config.check_servable(fs)
        return config

    def check_servable(self, fs: ForgetSet) -> None:
        """Refuse, in one sentence, a forget set this engine cannot serve."""
        if fs.lora_rank > self.max_lora_rank:
            raise UldError(f"forget set {fs.name} has LoRA rank {fs.lora_rank}, above this engine's maximum {self.max_lora_rank}")
        if fs.is_weight_level and not self.weight_level:
            raise UldError(f"forget set {fs.name} is weight-level; start the engine with weight-level forget sets enabled")
        if not fs.is_weight_level and fs.num_layers != self.num_assistant_layers:
            raise UldError(f"forget set {fs.name} has an assistant of {fs.num_layers} layers; "
                           f"this engine serves assistants of {self.num_assistant_layers}")

    def lora_modules(self) -> list:
        """ULD forget sets put LoRA on the assistant's linears only, so the target's layers keep
        the plain (fast) path; weight-level forget sets need the target's linears too."""
        modules = [f"{ASSISTANT_PREFIX}.layers.{i}.{m}" for i in range(self.num_assistant_layers) for m in LINEARS]
        if self.weight_level:
            modules += [f"model.layers.{i}.{m}" for i in range(self.target_layers) for m in LINEARS]
        return modules

    def overrides(self) -> EngineOverrides:
        return EngineOverrides(assistant_layers=self.num_assistant_layers, relative_top_range=self.relative_top_range,
                               sparse_head=self.sparse_head, compile_target=not self.weight_level, stacked=self.stacked)

    def vllm_kwargs(self) -> dict:
        return {
            "hf_overrides": {**self.target_overrides, "architectures": [ARCHITECTURE], **self.overrides().as_hf_overrides()},
            "enable_lora": True,
            "lora_target_modules": self.lora_modules(),
            "max_loras": self.max_loras,
            "max_lora_rank": self.max_lora_rank,
            "logits_processors": ["uld_serve.engine.logits:UldLogitsProcessor"],
            "logprobs_mode": "processed_logprobs",
        }

    def settings(self, forget_set: Optional[str], alpha=None, relative_top=None, repetition_penalty=None,
                 frequency_penalty=None) -> Settings:
        """What one request is served with (core.resolve), refusing a forget set this
        engine does not know and, with the sparse head, an r outside its range."""
        fs = None if forget_set is None else find_forget_set(self.forget_sets, forget_set)
        return resolve(fs, alpha, relative_top, self.relative_top_range, repetition_penalty, frequency_penalty)
