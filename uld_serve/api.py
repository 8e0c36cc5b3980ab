"""The Python API, in vLLM's conventions: `UldLLM(target, forget_sets).generate(prompts,
sampling_params, forget_set=..., alpha=...)` and `.chat(messages, ...)`, over the vLLM engine
(engine="vllm") or the plain-PyTorch reference decoder (engine="reference").

    from uld_serve import SamplingParams, UldLLM

    llm = UldLLM("TARGET_DIR", {"forget10": "FORGET10_DIR"})
    outs = llm.generate(["Who wrote ...?", "Who wrote ...?"], SamplingParams(temperature=0, max_tokens=64),
                        forget_set=["forget10", None])  # one value for all prompts, or one per prompt
    outs[0].outputs[0].text, outs[0].uld  # {"forget_set": "forget10", "alpha": 0.75, "relative_top": 0.01, ...}
"""
from dataclasses import dataclass, field
from typing import Optional

from .core.devices import resolve_device
from .core.errors import UldError
from .core.requests import GenerationRequest
from .core.settings import check_output_penalty

ENGINES = ("vllm", "reference")
DTYPES = ("fp32", "bf16")  # one vocabulary for every command and entry point
_DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16"}
VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def check_dtype(dtype: str) -> str:
    """fp32 or bf16 (float32 and bfloat16 are accepted for the same)."""
    dtype = _DTYPE_ALIASES.get(dtype, dtype)
    if dtype not in DTYPES:
        raise UldError(f"dtype must be fp32 or bf16, got {dtype!r}")
    return dtype


@dataclass
class SamplingParams:
    """The sampling settings both backends honour, with vLLM's names and defaults, except that
    repetition_penalty and frequency_penalty None mean the forget set's served default (none
    without one); a vllm.SamplingParams is accepted in its place (its penalties are always
    explicit)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: Optional[int] = None
    ignore_eos: bool = False
    repetition_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    presence_penalty: float = 0.0


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list


@dataclass
class RequestOutput:
    """One prompt's result, shaped like vLLM's RequestOutput, plus `uld`: the forget set,
    alpha, relative_top and repetition penalty it was served with."""

    prompt: Optional[str]
    prompt_token_ids: list
    outputs: list
    uld: dict = field(default_factory=dict)


def check_backend(engine: str, dtype: str, device: str = "auto") -> str:
    """Refuse a bad engine, dtype or device in one sentence, before anything loads; returns the dtype."""
    if engine not in ENGINES:
        raise UldError(f"engine must be {' or '.join(ENGINES)}, got {engine!r}")
    resolve_device(device)
    if engine == "vllm" and device != "auto":
        raise UldError("--device places the reference engine; vLLM runs on its own platform (leave --device auto)")
    return check_dtype(dtype)


def open_backend(target, forget_sets: Optional[dict] = None, engine: str = "vllm", dtype: str = "fp32", device: str = "auto",
                 **engine_kwargs):
    """A core.requests.Generator: vLLM's engine or the reference decoder over the same target
    and forget sets (name -> artifact directory). `device` places the reference decoder
    (core/devices.py); vLLM runs on its own platform."""
    dtype = check_backend(engine, dtype, device)
    if engine == "reference":
        import torch

        from .reference import UldModel

        return UldModel(target, forget_sets, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[dtype], device=device)
    from .engine.llm import UldEngine

    return UldEngine(target, forget_sets, dtype=VLLM_DTYPES[dtype], **engine_kwargs)


def _per_prompt(name: str, value, count: int) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise UldError(f"{name} has {len(value)} values for {count} prompts")
        return list(value)
    return [value] * count


class UldLLM:
    def __init__(self, target, forget_sets: Optional[dict] = None, *, engine: str = "vllm", dtype: str = "fp32",
                 device: str = "auto", **engine_kwargs):
        """target: a checkpoint directory or a known model name; forget_sets: name -> forget-set
        directory; device places the reference engine; engine_kwargs go to the vLLM engine
        (max_model_len, sparse_head, ...)."""
        self._attach(open_backend(target, forget_sets, engine, dtype, device, **engine_kwargs))

    @classmethod
    def from_backend(cls, backend) -> "UldLLM":
        """Over a Generator that is already open (a UldModel or UldEngine)."""
        llm = cls.__new__(cls)
        llm._attach(backend)
        return llm

    def _attach(self, backend) -> None:
        self.backend = backend
        self.tokenizer = backend.tokenizer
        self.forget_sets = backend.forget_sets

    def settings(self, forget_set: Optional[str] = None, alpha=None, relative_top=None, repetition_penalty=None,
                 frequency_penalty=None) -> dict:
        """What a request would be served with: {forget_set, alpha, relative_top,
        repetition_penalty, frequency_penalty}; refuses unknown forget sets and out-of-range
        values in one sentence (UldError)."""
        return self.backend.settings(forget_set, alpha, relative_top, repetition_penalty, frequency_penalty).as_dict()

    def generate(self, prompts, sampling_params=None, *, forget_set=None, alpha=None, relative_top=None,
                 use_tqdm: bool = True) -> list:
        """prompts: a string, {"prompt_token_ids": [...]}, or a list of them. sampling_params,
        forget_set, alpha and relative_top: one value for every prompt or a list of one per
        prompt (None: no forget set / the forget set's defaults)."""
        prompts = prompts if isinstance(prompts, list) else [prompts]
        texts, ids = [], []
        for p in prompts:
            if isinstance(p, str):
                texts.append(p)
                ids.append(list(self.tokenizer(p)["input_ids"]))
            elif isinstance(p, dict) and p.get("prompt_token_ids"):
                texts.append(p.get("prompt"))
                ids.append(list(p["prompt_token_ids"]))
            else:
                raise UldError("a prompt is a string or {'prompt_token_ids': [...]}")
        return self._run(texts, ids, sampling_params, forget_set, alpha, relative_top, use_tqdm)

    def chat(self, messages, sampling_params=None, *, forget_set=None, alpha=None, relative_top=None,
             use_tqdm: bool = True) -> list:
        """messages: one conversation (a list of {"role", "content"}) or a list of them; each is
        formatted with the target's chat template and a generation prompt, as vLLM's LLM.chat."""
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        ids = []
        for conversation in conversations:
            if not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in conversation):
                raise UldError("a conversation is a list of {role, content} objects")
            out = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
            ids.append(list(out["input_ids"] if hasattr(out, "keys") else out))
        return self._run([None] * len(ids), ids, sampling_params, forget_set, alpha, relative_top, use_tqdm)

    def _run(self, texts, ids, sampling_params, forget_set, alpha, relative_top, use_tqdm) -> list:
        n = len(ids)
        params = _per_prompt("sampling_params", sampling_params or SamplingParams(), n)
        requests = [
            GenerationRequest(prompt_ids=i, forget_set=f, alpha=a, relative_top=r, max_new_tokens=p.max_tokens,
                              temperature=p.temperature, top_p=p.top_p, seed=p.seed or 0, ignore_eos=p.ignore_eos,
                              repetition_penalty=p.repetition_penalty, frequency_penalty=p.frequency_penalty,
                              presence_penalty=check_output_penalty(p.presence_penalty, "presence_penalty"))
            for i, p, f, a, r in zip(ids, params, _per_prompt("forget_set", forget_set, n), _per_prompt("alpha", alpha, n),
                                     _per_prompt("relative_top", relative_top, n))
        ]
        applied = [self.backend.settings(r.forget_set, r.alpha, r.relative_top, r.repetition_penalty, r.frequency_penalty)
                   for r in requests]  # refuse before work
        progress = None
        if use_tqdm:
            from tqdm import tqdm

            bar = tqdm(total=n, desc="generate", unit="req", dynamic_ncols=True)
            progress = bar.update
        try:
            tokens = self.backend.generate(requests, progress=progress)
        finally:
            if use_tqdm:
                bar.close()
        return [RequestOutput(text, req.prompt_ids,
                              [CompletionOutput(0, self.tokenizer.decode(out, skip_special_tokens=True), out)], a.as_dict())
                for text, req, out, a in zip(texts, requests, tokens, applied)]

    def close(self) -> None:
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
