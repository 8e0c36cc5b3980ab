"""The request type every generation backend takes, and the protocol they implement: the
reference decoder (reference.py, plain PyTorch) and the vLLM engine (engine/llm.py)."""
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import torch

from .settings import Settings


@dataclass
class GenerationRequest:
    prompt_ids: list
    forget_set: Optional[str] = None
    alpha: Optional[float] = None  # None: the forget set's default
    relative_top: Optional[float] = None
    repetition_penalty: Optional[float] = None  # None: the forget set's default, else none
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    # vLLM's (OpenAI's): subtracted from a token's logit per time / once it is in the output so
    # far (not the prompt), after the repetition penalty; frequency None: the forget set's default, else none
    frequency_penalty: Optional[float] = None
    presence_penalty: float = 0.0
    seed: int = 0
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks)


class Generator(Protocol):
    """A backend that serves `target - alpha * assistant` per request."""

    tokenizer: object
    forget_sets: dict  # name -> core.artifact.ForgetSet

    def settings(self, forget_set: Optional[str], alpha=None, relative_top=None, repetition_penalty=None,
                 frequency_penalty=None) -> Settings:
        """What a request is served with (core.settings.resolve against this backend's sets)."""

    def generate(self, requests: list, progress: Optional[Callable[[int], None]] = None) -> list:
        """Token ids generated for each GenerationRequest, in request order."""

    def close(self) -> None:
        """Release the backend's processes and memory."""


@dataclass
class Prefix:
    """Right-padded prompts (P, S) that scored rows continue: row b continues prompt rows[b]
    (evaluation scores several answers per question over one prompt forward)."""

    ids: torch.Tensor
    mask: torch.Tensor
    rows: torch.Tensor
