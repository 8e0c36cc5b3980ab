"""The owner of a request's ULD settings: alpha and the filter r (`relative_top`), their
defaults, their ranges, the one check of each, how a request's values are resolved against
its forget set, and the keys that carry them into vLLM (per request in
`SamplingParams.extra_args`, per engine in the model config's `uld_*` overrides).

A forget set's manifest may also name a repetition penalty and a frequency penalty to serve it
with (vLLM's sampling parameters, applied after the logit difference): its answers, like any
greedy decoding with the target's likely tokens taken away, can loop on one phrase. A
request's own value wins.

Policy: a value out of range is refused with one sentence (a 400 at the server, exit 2 at the
CLI, an error from the engine); nothing is clamped.
"""
from dataclasses import asdict, dataclass
from typing import Optional

from .errors import UldError

DEFAULT_ALPHA = 0.75  # the paper's served alpha
DEFAULT_RELATIVE_TOP = 0.01  # the paper's filter r
ALPHA_RANGE = (0.0, 5.0)  # what a request may ask for, everywhere alpha is accepted
RELATIVE_TOP_RANGE = (1e-9, 1.0)  # r in (0, 1]: the smallest r still keeps the top token

# per-request values in vLLM's SamplingParams.extra_args (the OpenAI server's `vllm_xargs`)
ALPHA_KEY = "uld_alpha"
RELATIVE_TOP_KEY = "uld_relative_top"
REPETITION_PENALTY_KEY = "repetition_penalty"  # the manifest's key and vLLM's field
FREQUENCY_PENALTY_KEY = "frequency_penalty"  # likewise
OUTPUT_PENALTY_RANGE = (-2.0, 2.0)  # frequency and presence penalties: vLLM's (and OpenAI's) range


@dataclass(frozen=True)
class Settings:
    """What one request is served with: its forget set (None: the target alone), the alpha
    and r applied (alpha 0 without a forget set or with a weight-level one), and the
    repetition and frequency penalties (None: neither the request nor the forget set names
    one, so the backend's default applies: none, or at vLLM's server the model's generation
    config)."""

    forget_set: Optional[str]
    alpha: float
    relative_top: float
    repetition_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None

    def as_dict(self) -> dict:
        return asdict(self)

    def extra_args(self) -> dict:
        return {ALPHA_KEY: self.alpha, RELATIVE_TOP_KEY: self.relative_top}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_alpha(value) -> float:
    if not _is_number(value) or not ALPHA_RANGE[0] <= value <= ALPHA_RANGE[1]:
        raise UldError(f"alpha must be a number in [{ALPHA_RANGE[0]}, {ALPHA_RANGE[1]}], got {value!r}")
    return float(value)


def check_relative_top(value, allowed: Optional[tuple] = None) -> float:
    """r in (0, 1], and within `allowed` (an engine with a sparse assistant head computed the
    assistant's logits only for that range) when given."""
    if not _is_number(value) or not 0.0 < value <= 1.0:
        raise UldError(f"relative_top must be a number in (0, 1], got {value!r}")
    r = float(value)
    if allowed is not None and not allowed[0] <= r <= allowed[1]:
        raise UldError(f"relative_top {r:g} is outside this engine's range [{allowed[0]:g}, {allowed[1]:g}]; "
                       "start it with a wider relative_top range")
    return r


def check_repetition_penalty(value) -> float:
    """vLLM's own rule: a finite number above 0 (1: no penalty, above 1: repeats less)."""
    if not _is_number(value) or not 0.0 < value < float("inf"):
        raise UldError(f"repetition_penalty must be a number above 0 (1: none), got {value!r}")
    return float(value)


def check_output_penalty(value, name: str = FREQUENCY_PENALTY_KEY) -> float:
    """vLLM's rule for the frequency and presence penalties: a number in [-2, 2] (0: none;
    above 0 repeats less)."""
    low, high = OUTPUT_PENALTY_RANGE
    if not _is_number(value) or not low <= value <= high:
        raise UldError(f"{name} must be a number in [{low:g}, {high:g}] (0: none), got {value!r}")
    return float(value)


# the sampling penalties a forget set's manifest may name as served defaults (its key, vLLM's
# field and the Settings field are one name): name -> its check
SERVED_PENALTIES = {REPETITION_PENALTY_KEY: check_repetition_penalty, FREQUENCY_PENALTY_KEY: check_output_penalty}


def check_range(low, high) -> tuple:
    if not 0.0 < low <= high <= 1.0:
        raise UldError(f"the relative_top range must satisfy 0 < low <= high <= 1, got {(low, high)}")
    return float(low), float(high)


def manifest_defaults(manifest: dict) -> tuple:
    """(alpha, relative_top, repetition_penalty or None, frequency_penalty or None) a forget set
    is served with when a request names none of them."""
    alpha = 0.0 if manifest.get("kind") == "weight-level" else manifest.get("alpha", DEFAULT_ALPHA)
    penalties = [manifest.get(key) for key in SERVED_PENALTIES]
    return (float(alpha), float(manifest.get("relative_top", DEFAULT_RELATIVE_TOP)),
            *(None if penalty is None else float(penalty) for penalty in penalties))


def resolve(forget_set=None, alpha=None, relative_top=None, relative_top_range: Optional[tuple] = None,
            repetition_penalty=None, frequency_penalty=None) -> Settings:
    """A request's Settings. `forget_set` is a core.artifact.ForgetSet or None; alpha,
    relative_top and the penalties are the request's own values (None: the forget set's
    defaults). Given values are checked even where they do not apply (no forget set,
    weight-level: alpha 0)."""
    if alpha is not None:
        alpha = check_alpha(alpha)
    if relative_top is not None:
        relative_top = check_relative_top(relative_top)
    if repetition_penalty is not None:
        repetition_penalty = check_repetition_penalty(repetition_penalty)
    if frequency_penalty is not None:
        frequency_penalty = check_output_penalty(frequency_penalty)
    if forget_set is None:
        return Settings(None, 0.0, DEFAULT_RELATIVE_TOP if relative_top is None else relative_top, repetition_penalty,
                        frequency_penalty)
    default_alpha, default_r, default_penalty, default_frequency = manifest_defaults(forget_set.manifest)
    relative_top = default_r if relative_top is None else relative_top
    repetition_penalty = default_penalty if repetition_penalty is None else repetition_penalty
    frequency_penalty = default_frequency if frequency_penalty is None else frequency_penalty
    if forget_set.is_weight_level:
        return Settings(forget_set.name, 0.0, relative_top, repetition_penalty, frequency_penalty)
    if relative_top_range is not None:
        check_relative_top(relative_top, relative_top_range)
    return Settings(forget_set.name, default_alpha if alpha is None else alpha, relative_top, repetition_penalty,
                    frequency_penalty)


# ---- per-engine values: the `uld_*` keys of the model config's hf_overrides ----

@dataclass(frozen=True)
class EngineOverrides:
    """What the vLLM wrapper model and the logits processor read from the model config."""

    assistant_layers: int
    relative_top_range: tuple = RELATIVE_TOP_RANGE
    sparse_head: bool = False
    compile_target: bool = False
    stacked: bool = True  # the assistant's layers share products with the target's first K (engine/model.py)

    def as_hf_overrides(self) -> dict:
        return {"uld_assistant_layers": self.assistant_layers, "uld_relative_top_range": list(self.relative_top_range),
                "uld_sparse_head": self.sparse_head, "uld_compile_target": self.compile_target, "uld_stacked": self.stacked}


def read_overrides(hf_config) -> EngineOverrides:
    """The one reader of the `uld_*` keys (absent keys: a wrapper started without uld-serve's
    config, which the model refuses for want of assistant layers)."""
    return EngineOverrides(
        assistant_layers=int(getattr(hf_config, "uld_assistant_layers", 0)),
        relative_top_range=tuple(getattr(hf_config, "uld_relative_top_range", RELATIVE_TOP_RANGE)),
        sparse_head=bool(getattr(hf_config, "uld_sparse_head", False)),
        compile_target=bool(getattr(hf_config, "uld_compile_target", False)),
        stacked=bool(getattr(hf_config, "uld_stacked", True)),
    )


def read_extra_args(extra_args: Optional[dict]) -> tuple:
    """(alpha, relative_top) of one request as the logits processor gets them: checked again
    (a client of a plain vLLM server may set them directly); absent: the target alone."""
    extra = extra_args or {}
    alpha = check_alpha(extra.get(ALPHA_KEY, 0.0))
    return alpha, check_relative_top(extra.get(RELATIVE_TOP_KEY, DEFAULT_RELATIVE_TOP))
