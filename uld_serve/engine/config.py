"""What vLLM must be told to serve a target with a set of forget sets: one place for the
offline engine (llm.py) and the OpenAI server (server/), so both run the same model."""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..artifact import ALPHA_RANGE, ForgetSet, find_forget_set, load_forget_set
from ..assistant import ASSISTANT_PREFIX, default_num_layers
from ..errors import UldError
from ..models import fingerprint, resolve_model
from .families import family_overrides
from .plugin import ARCHITECTURE

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def lora_rank(fs: ForgetSet) -> int:
    return int(fs.manifest.get("training", {}).get("rank", 8))


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

    @classmethod
    def build(cls, target_dir, forget_sets: Optional[dict] = None, *, sparse_head: bool = False,
              relative_top_range: Optional[tuple] = None, weight_level: bool = False,
              min_lora_rank: int = 8, max_loras: Optional[int] = None) -> "EngineConfig":
        """forget_sets: name -> artifact directory. sparse_head: compute the assistant's LM head
        only where the filter can keep a token for some r in relative_top_range (default: the
        forget sets' manifest values) and refuse requests outside it; with the dense head any
        r in (0, 1] is served. weight_level: accept weight-level forget sets even if none is
        given now (their LoRA makes the target's layers LoRA layers, a slower path)."""
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
        defaults = [fs.settings()[1] for fs in assistant_sets] or [0.01]
        widest = (min(defaults), max(defaults)) if sparse_head else (1e-9, 1.0)
        low, high = tuple(relative_top_range or widest)
        if not 0.0 < low <= high <= 1.0:
            raise UldError(f"relative_top_range must satisfy 0 < low <= high <= 1, got {(low, high)}")
        needed = max([min_lora_rank] + [lora_rank(fs) for fs in sets.values()])
        config = cls(
            target_dir=target_dir, target_fingerprint=target_fingerprint, target_layers=target_layers,
            target_overrides=overrides, forget_sets=sets,
            num_assistant_layers=depths.pop() if depths else default_num_layers(target_layers),
            relative_top_range=(low, high), sparse_head=sparse_head,
            weight_level=weight_level or any(fs.is_weight_level for fs in sets.values()),
            max_lora_rank=next((r for r in LORA_RANKS if r >= needed), LORA_RANKS[-1]),
            max_loras=max_loras or max(1, len(sets)),
        )
        for fs in sets.values():
            config.check_servable(fs)
        return config

    def check_servable(self, fs: ForgetSet) -> None:
        """Refuse, in one sentence, a forget set this engine cannot serve."""
        if lora_rank(fs) > self.max_lora_rank:
            raise UldError(f"forget set {fs.name} has LoRA rank {lora_rank(fs)}, above this engine's maximum {self.max_lora_rank}")
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

    def vllm_kwargs(self) -> dict:
        return {
            "hf_overrides": {
                **self.target_overrides,
                "architectures": [ARCHITECTURE],
                "uld_assistant_layers": self.num_assistant_layers,
                "uld_relative_top_range": list(self.relative_top_range),
                "uld_sparse_head": self.sparse_head,
                "uld_compile_target": not self.weight_level,
            },
            "enable_lora": True,
            "lora_target_modules": self.lora_modules(),
            "max_loras": self.max_loras,
            "max_lora_rank": self.max_lora_rank,
            "logits_processors": ["uld_serve.engine.logits:UldLogitsProcessor"],
            "logprobs_mode": "processed_logprobs",
        }

    def request_settings(self, forget_set: Optional[str], alpha=None, relative_top=None) -> tuple:
        """(ForgetSet or None, alpha, relative_top) for one request, manifest defaults filled in."""
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                                  or not ALPHA_RANGE[0] <= alpha <= ALPHA_RANGE[1]):
            raise UldError(f"alpha must be a number in [{ALPHA_RANGE[0]:g}, {ALPHA_RANGE[1]:g}], got {alpha!r}")
        if relative_top is not None and (isinstance(relative_top, bool) or not isinstance(relative_top, (int, float))
                                         or not 0.0 < relative_top <= 1.0):
            raise UldError(f"relative_top must be a number in (0, 1], got {relative_top!r}")
        if forget_set is None:
            return None, 0.0, 0.01 if relative_top is None else float(relative_top)
        fs = find_forget_set(self.forget_sets, forget_set)
        alpha, relative_top = fs.settings(alpha, relative_top)
        low, high = self.relative_top_range
        if not fs.is_weight_level and not low <= relative_top <= high:
            raise UldError(f"relative_top {relative_top} is outside this engine's range [{low}, {high}]; "
                           "start it with a wider relative_top_range")
        return fs, alpha, relative_top
