"""Reference decoding in plain PyTorch/transformers: the ground truth the vLLM engine must match.

A UldModel holds the target, and for each forget set a LoRA adapter on an assistant that
shares the target's tensors. Per decoding step it serves logit_difference(target, assistant,
alpha) with ULD's relative-top filter; rows without a forget set get the target's logits.
A repetition penalty then applies as vLLM's sampler applies it, after the logits processors.
"""
from collections import defaultdict
from pathlib import Path
from typing import Optional

import torch
from transformers import DynamicCache

from uld_kernels import logit_difference

from .core.artifact import find_forget_set, load_forget_set
from .core.assistant import build_assistant
from .core.devices import resolve_device
from .core.errors import UldError
from .core.models import fingerprint, load_model, load_tokenizer
from .core.requests import Prefix
from .core.settings import Settings, resolve


class UldModel:
    def __init__(self, target_dir, forget_sets: Optional[dict] = None, dtype=torch.float32, device="auto"):
        self.target_dir = Path(target_dir)
        self.device = resolve_device(device)
        self.target = load_model(target_dir, dtype=dtype, device=self.device)
        self.tokenizer = load_tokenizer(target_dir)
        self.target_fingerprint = fingerprint(target_dir)
        self.forget_sets: dict = {}
        self._assistants: dict = {}  # K -> peft model holding every adapter of that depth
        self._weight_level: dict = {}  # name -> the target with that weight-level LoRA merged
        eos = self.target.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        self.eos_ids.discard(None)
        for name, path in (forget_sets or {}).items():
            self.add_forget_set(name, path)

    def add_forget_set(self, name: str, path):
        from peft import PeftModel

        if name in self.forget_sets:
            raise UldError(f"forget set name {name!r} is given twice")
        fs = load_forget_set(name, path, self.target_fingerprint)
        if fs.is_weight_level:  # the target's own weights change: a merged copy of the target
            model = PeftModel.from_pretrained(load_model(self.target_dir, dtype=self.target.dtype, device=self.device), str(path))
            self._weight_level[name] = model.merge_and_unload().eval()
            self.forget_sets[name] = fs
            return fs
        k = fs.num_layers
        if k not in self._assistants:
            self._assistants[k] = PeftModel.from_pretrained(build_assistant(self.target, k), str(path), adapter_name=name)
        else:
            self._assistants[k].load_adapter(str(path), adapter_name=name)
        self._assistants[k].eval()
        self.forget_sets[name] = fs
        return fs

    def _forget_set(self, name: str):
        return find_forget_set(self.forget_sets, name)

    def _models(self, forget_set: Optional[str]) -> tuple:
        """(the model that plays the target, the assistant or None) for rows of this forget set."""
        if forget_set is None:
            return self.target, None
        fs = self._forget_set(forget_set)
        if fs.is_weight_level:
            return self._weight_level[forget_set], None
        return self.target, self._assistant(fs)

    def _assistant(self, fs):
        peft_model = self._assistants[fs.num_layers]
        peft_model.set_adapter(fs.name)
        return peft_model

    def settings(self, forget_set: Optional[str], alpha=None, relative_top=None, repetition_penalty=None,
                 frequency_penalty=None) -> Settings:
        """What a request is served with (core.settings.resolve against these forget sets)."""
        fs = None if forget_set is None else self._forget_set(forget_set)
        return resolve(fs, alpha, relative_top, repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty)

    def close(self) -> None:
        """Nothing to stop (the Generator protocol's close, for vLLM's engine processes)."""

    # ---- scoring (evaluation): probabilities use a "score" variant of the filter ----
    @torch.no_grad()
    def score_logits(self, input_ids, attention_mask, forget_set=None, alpha=None, relative_top=None,
                     positions=None, mode="score", prefix=None):
        """fp32 logits for teacher-forced scoring of right-padded inputs: (B, T, V), or (N, V) at
        the N places where the boolean (B, T) `positions` is true (the LM heads run only there).
        With a `prefix` (a Prefix), row b continues the prompt prefix.rows[b].
        `mode`: "score" (the paper's forward) or "score_anchored" (kernels/README.md)."""
        target_logits, assistant_logits = self.score_parts(input_ids, attention_mask, forget_set, positions, prefix)
        if assistant_logits is None:
            return target_logits.float()
        applied = self.settings(forget_set, alpha, relative_top)
        return logit_difference(target_logits, assistant_logits, applied.alpha, applied.relative_top, mode=mode)

    @torch.no_grad()
    def score_parts(self, input_ids, attention_mask, forget_set=None, positions=None, prefix=None):
        """(target logits, assistant logits or None) as score_logits takes them, before the
        difference: one forward each, for any number of alphas (benchmarks/tune_assistant.py)."""
        target, assistant = self._models(forget_set)
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        positions = None if positions is None else positions.to(self.device)
        if prefix is not None:
            prefix = Prefix(prefix.ids.to(self.device), prefix.mask.to(self.device), prefix.rows.to(self.device))
        target_logits = _logits(target, input_ids, attention_mask, positions, prefix)
        return target_logits, None if assistant is None else _logits(assistant, input_ids, attention_mask, positions, prefix)

    # ---- generation: filtered tokens are excluded from sampling ("serve") ----
    def generate(self, requests: list, batch_size: int = 32, progress=None) -> list:
        """Token ids generated for each request, in request order. Rows are batched by forget set."""
        applied = [self.settings(r.forget_set, r.alpha, r.relative_top, r.repetition_penalty, r.frequency_penalty)
                   for r in requests]  # refuse before work
        groups = defaultdict(list)
        for i, (r, a) in enumerate(zip(requests, applied)):
            groups[(r.forget_set, a.relative_top)].append(i)
        outputs = [None] * len(requests)
        for (forget_set, relative_top), indices in groups.items():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                batch = [requests[i] for i in chunk]
                for i, tokens in zip(chunk, self._generate_batch(batch, forget_set, relative_top, [applied[i] for i in chunk])):
                    outputs[i] = tokens
                if progress is not None:
                    progress(len(chunk))
        return outputs

    @torch.no_grad()
    def _generate_batch(self, requests, forget_set, relative_top, applied):
        pad = self.tokenizer.pad_token_id
        width = max(len(r.prompt_ids) for r in requests)
        device = self.device
        input_ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + list(r.prompt_ids) for r in requests], device=device)
        attention_mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests], device=device)
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        alphas = torch.tensor([a.alpha for a in applied], device=device)
        penalties = torch.tensor([1.0 if a.repetition_penalty is None else a.repetition_penalty for a in applied], device=device)
        seen = None  # (B, V): the tokens of each row's prompt and output so far, where a penalty applies
        if bool((penalties != 1.0).any()):
            seen = torch.zeros(len(requests), self.target.config.vocab_size, dtype=torch.bool, device=device)
            for b, r in enumerate(requests):
                seen[b, list(r.prompt_ids)] = True
        frequency = torch.tensor([a.frequency_penalty or 0.0 for a in applied], device=device)
        presence = torch.tensor([r.presence_penalty for r in requests], device=device)
        counts = None  # (B, V): how often each row's output so far holds each token, where those penalties apply
        if bool((frequency != 0).any() or (presence != 0).any()):
            counts = torch.zeros(len(requests), self.target.config.vocab_size, dtype=torch.long, device=device)
        target, assistant = self._models(forget_set)
        models = [(target, DynamicCache())] + ([(assistant, DynamicCache())] if assistant is not None else [])
        generators = [torch.Generator().manual_seed(r.seed) for r in requests]

        def step(ids, mask, pos):
            return [m(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=c, use_cache=True).logits[:, -1]
                    for m, c in models]

        logits = step(input_ids, attention_mask, positions)
        outputs = [[] for _ in requests]
        done = [False] * len(requests)
        for _ in range(max(r.max_new_tokens for r in requests)):
            served = logits[0].float() if assistant is None else logit_difference(logits[0], logits[1], alphas, relative_top, "serve")
            if seen is not None:
                served = repetition_penalized(served, seen, penalties)
            if counts is not None:  # vLLM's order and arithmetic: after the repetition penalty
                served = served - frequency[:, None] * counts - presence[:, None] * (counts > 0)
            greedy = served.argmax(-1).tolist()  # one batched argmax for every greedy row
            next_ids = []
            for b, r in enumerate(requests):
                if done[b]:
                    token = pad
                else:
                    # sampling on the CPU: a seed draws the same tokens whatever the device
                    token = greedy[b] if r.temperature == 0 else sample_token(served[b].cpu(), r.temperature, r.top_p, generators[b])
                if not done[b]:
                    outputs[b].append(token)
                    if seen is not None:
                        seen[b, token] = True
                    if counts is not None:
                        counts[b, token] += 1
                    done[b] = (token in self.eos_ids and not r.ignore_eos) or len(outputs[b]) >= r.max_new_tokens
                next_ids.append(token)
            if all(done):
                break
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(requests), 1)], dim=1)
            positions = positions[:, -1:] + 1
            logits = step(torch.tensor(next_ids, device=device)[:, None], attention_mask, positions)
        return outputs


def _logits(model, input_ids, attention_mask, positions, prefix=None):
    """The causal LM's logits, everywhere or (LM head only there) at the `positions` mask."""
    if positions is None and prefix is None:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: LoRA layers stay in place
    lm = getattr(lm, "assistant", lm)
    if prefix is None:
        hidden = lm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    else:
        hidden = _continue_prompts(lm.model, prefix, input_ids, attention_mask)
    return lm.lm_head(hidden if positions is None else hidden[positions])


def _continue_prompts(body, prefix: Prefix, input_ids, attention_mask):
    """Hidden states of right-padded continuations of prompts that run once each: rows that
    continue the same prompt share its KV cache (TOFU scores 7 answers per question)."""
    cache = DynamicCache()
    body(input_ids=prefix.ids, attention_mask=prefix.mask, past_key_values=cache, use_cache=True)
    cache.batch_select_indices(prefix.rows)
    mask = torch.cat([prefix.mask[prefix.rows], attention_mask], dim=1)
    start = prefix.mask.sum(-1)[prefix.rows]
    position_ids = start[:, None] + torch.arange(input_ids.shape[1], device=input_ids.device)
    return body(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                use_cache=True).last_hidden_state


def repetition_penalized(logits: torch.Tensor, seen: torch.Tensor, penalties: torch.Tensor) -> torch.Tensor:
    """vLLM's repetition penalty in its own fp32 arithmetic (its torch path): where row b has
    seen a token (prompt or output), a positive logit is multiplied by 1 / penalties[b] and
    any other by penalties[b]."""
    per_token = torch.where(seen, penalties[:, None], 1.0)
    return logits * torch.where(logits > 0, 1.0 / per_token, per_token)


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Greedy when temperature is 0; else temperature, then nucleus (top-p) sampling."""
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # keep the smallest set reaching top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))
