"""The offline engine: a vLLM LLM over the ULD wrapper model, with named forget sets.

Each request chooses its forget set (a LoRA adapter on the assistant layers) or none,
and its alpha and filter r; defaults come from the forget set's manifest.
"""
import json
import os
from typing import Optional

from ..artifact import find_forget_set, load_forget_set
from ..assistant import ASSISTANT_PREFIX, default_num_layers
from ..errors import UldError
from ..models import fingerprint, resolve_model
from ..reference import GenerationRequest
from .logits import ALPHA_KEY, RELATIVE_TOP_KEY
from .plugin import ARCHITECTURE

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def _engine_defaults() -> None:
    # One code path on CPU and GPU: the V1 model runner, whose logits-processor interface
    # the ULD processor implements (Model Runner V2 has another one).
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    # vLLM on CPU reserves one core for itself unless told otherwise; on a 2-core machine
    # that halves throughput (DESIGN.md: 360 vs 244 tokens/s).
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


class UldEngine:
    def __init__(self, target_dir, forget_sets: Optional[dict] = None, dtype: str = "float32",
                 max_model_len: int = 2048, seed: int = 0, relative_top_range: Optional[tuple] = None,
                 sparse_head: bool = False, **llm_kwargs):
        """sparse_head: compute the assistant's LM head only where the filter can keep a token
        for some r in relative_top_range (default: the forget sets' manifest values), and
        refuse requests outside that range. Off by default: on the CPU it measured slower
        than vLLM's dense head (BENCHMARKS.md). With the dense head any r in (0, 1] is served."""
        _engine_defaults()
        from vllm import LLM

        self.target_dir = resolve_model(str(target_dir))
        target_fingerprint = fingerprint(self.target_dir)
        self.forget_sets = {name: load_forget_set(name, path, target_fingerprint) for name, path in (forget_sets or {}).items()}
        self._lora_ids = {name: i for i, name in enumerate(self.forget_sets, start=1)}
        assistant_sets = [fs for fs in self.forget_sets.values() if not fs.is_weight_level]
        depths = {fs.num_layers for fs in assistant_sets}
        if len(depths) > 1:
            raise UldError(f"forget sets of different assistant depths {sorted(depths)} cannot be served together")
        target_layers = json.loads((self.target_dir / "config.json").read_text())["num_hidden_layers"]
        self.num_assistant_layers = depths.pop() if depths else default_num_layers(target_layers)
        defaults = [fs.settings()[1] for fs in assistant_sets] or [0.01]
        widest = (min(defaults), max(defaults)) if sparse_head else (1e-9, 1.0)
        self.relative_top_range = tuple(relative_top_range or widest)
        if not 0.0 < self.relative_top_range[0] <= self.relative_top_range[1] <= 1.0:
            raise UldError(f"relative_top_range must satisfy 0 < low <= high <= 1, got {self.relative_top_range}")
        ranks = [fs.manifest.get("training", {}).get("rank", 8) for fs in self.forget_sets.values()]
        max_rank = next(r for r in LORA_RANKS if r >= max(ranks or [8]))
        self.llm = LLM(
            model=str(self.target_dir),
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            hf_overrides={
                "architectures": [ARCHITECTURE],
                "uld_assistant_layers": self.num_assistant_layers,
                "uld_relative_top_range": list(self.relative_top_range),
                "uld_sparse_head": sparse_head,
            },
            enable_lora=True,
            lora_target_modules=self._lora_modules(target_layers),
            max_loras=max(1, len(self.forget_sets)),
            max_lora_rank=max_rank,
            logits_processors=["uld_serve.engine.logits:UldLogitsProcessor"],
            logprobs_mode="processed_logprobs",
            **llm_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def _lora_modules(self, target_layers: int) -> list:
        """ULD forget sets put LoRA on the assistant's linears only, so the target's layers keep
        the plain (fast) path; only a weight-level forget set (a LoRA on the target itself)
        makes the target's linears LoRA layers too."""
        modules = [f"{ASSISTANT_PREFIX}.layers.{i}.{m}" for i in range(self.num_assistant_layers) for m in LINEARS]
        if any(fs.is_weight_level for fs in self.forget_sets.values()):
            modules += [f"model.layers.{i}.{m}" for i in range(target_layers) for m in LINEARS]
        return modules

    def close(self) -> None:
        """Stop vLLM's engine processes now rather than at interpreter exit."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()

    def sampling(self, request: GenerationRequest):
        """vLLM SamplingParams and LoRA request for one of our requests (manifest defaults applied)."""
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        lora, alpha, relative_top = None, 0.0, 0.01 if request.relative_top is None else request.relative_top
        if request.forget_set is not None:
            fs = find_forget_set(self.forget_sets, request.forget_set)
            lora = LoRARequest(fs.name, self._lora_ids[fs.name], str(fs.path))
            alpha, relative_top = fs.settings(request.alpha, request.relative_top)
            low, high = self.relative_top_range
            if not low <= relative_top <= high:
                raise UldError(f"relative_top {relative_top} is outside this engine's range [{low}, {high}]; "
                               "start it with a wider relative_top_range")
        params = SamplingParams(
            max_tokens=request.max_new_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed if request.temperature > 0 else None,
            ignore_eos=request.ignore_eos,
            extra_args={ALPHA_KEY: float(alpha), RELATIVE_TOP_KEY: float(relative_top)},
        )
        return params, lora

    def generate(self, requests: list, use_tqdm: bool = True) -> list:
        """Token ids generated for each request, in request order."""
        from vllm.inputs import TokensPrompt

        prompts, params, loras = [], [], []
        for r in requests:
            p, lora = self.sampling(r)
            prompts.append(TokensPrompt(prompt_token_ids=list(r.prompt_ids)))
            params.append(p)
            loras.append(lora)
        outputs = self.llm.generate(prompts, params, lora_request=loras, use_tqdm=use_tqdm)
        return [list(o.outputs[0].token_ids) for o in outputs]
