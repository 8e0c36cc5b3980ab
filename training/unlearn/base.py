"""What an unlearning method is: named hyperparameters, a forget loss, a retain term, and
(rarely) its own optimizer or backward. Methods register by name; `uld unlearn --method`
looks them up here."""
from typing import Optional

import torch

from uld_serve.core.errors import UldError

from ..batching import answer_logits
from ..loop import adamw
from .objectives import kl_to_reference, mean_nll

METHODS: dict = {}
RETAIN_LOSSES = ("nll", "kl", "none")
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def register(cls):
    METHODS[cls.name] = cls
    return cls


def get_method(name: str, params: Optional[dict] = None) -> "Method":
    if name not in METHODS:
        raise UldError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}")
    return METHODS[name](**(params or {}))


class Step:
    """One training step's data and the forward passes a method asks for, each run once.
    Logits are (N, V) at the batch's answer positions (objectives.py)."""

    def __init__(self, model, forget: dict, retain: dict, reference=None):
        self.model, self.reference = model, reference
        self.batches = {"forget": forget, "retain": retain}
        self._logits, self._reference_logits = {}, {}

    def labels(self, which: str) -> torch.Tensor:
        return self.batches[which]["labels"]

    def logits(self, which: str) -> torch.Tensor:
        if which not in self._logits:
            self._logits[which] = answer_logits(self.model, self.batches[which])[0]
        return self._logits[which]

    def reference_logits(self, which: str) -> torch.Tensor:
        if which not in self._reference_logits:
            with torch.no_grad(), self.reference() as ref:
                self._reference_logits[which] = answer_logits(ref, self.batches[which])[0]
        return self._reference_logits[which]


class Method:
    """loss = forget_weight * forget_term + retain_weight * retain term (NLL, KL to the
    original model, or none). Subclasses set `name`, `defaults` and `forget_term`."""

    name = ""
    defaults: dict = {}
    uses_reference = False  # the forget loss compares with the original model
    weighted = True  # takes the weighting below (MOLLM balances its objectives itself)
    weighting = {"forget_weight": 1.0, "retain_weight": 1.0, "retain_loss": "nll"}
    positive: tuple = ()  # hyperparameters that must be > 0

    def __init__(self, **params):
        merged = {**(self.weighting if self.weighted else {}), **self.defaults}
        unknown = sorted(set(params) - set(merged))
        if unknown:
            raise UldError(f"method {self.name} has no hyperparameter {unknown[0]!r}; it takes {', '.join(sorted(merged)) or 'none'}")
        for key, value in params.items():
            merged[key] = _coerce(key, value, merged[key])
        if self.weighted and merged["retain_loss"] not in RETAIN_LOSSES:
            raise UldError(f"retain_loss must be one of {', '.join(RETAIN_LOSSES)}, got {merged['retain_loss']!r}")
        self.params = merged
        for key, value in merged.items():  # self.beta, self.retain_weight, ...
            setattr(self, key, value)
        for key in self.positive:
            if not merged[key] > 0:
                raise UldError(f"{key} must be positive, got {merged[key]}")
        self.validate()

    def validate(self):
        pass

    @property
    def needs_reference(self) -> bool:
        return self.uses_reference or self.params.get("retain_loss") == "kl"

    def forget_term(self, step: Step) -> torch.Tensor:
        raise NotImplementedError

    def retain_term(self, step: Step) -> Optional[torch.Tensor]:
        kind = self.params["retain_loss"]
        if kind == "nll":
            return mean_nll(step.logits("retain"), step.labels("retain"))
        if kind == "kl":
            return kl_to_reference(step.logits("retain"), step.reference_logits("retain"))
        return None

    def terms(self, step: Step) -> dict:
        """Named loss terms; "loss" is the objective that is minimised."""
        forget = self.forget_term(step)
        terms = {"loss": self.forget_weight * forget, "forget": forget}
        retain = self.retain_term(step)
        if retain is not None:
            terms["retain"] = retain
            terms["loss"] = terms["loss"] + self.retain_weight * retain
        return terms

    # Hooks for methods that change the update itself (MOLLM, SOUL); plain ones keep these.
    def make_optimizer(self, params, lr, weight_decay):
        return adamw(params, lr=lr, weight_decay=weight_decay)

    def backward(self, terms: dict, params: list, step_index: int, step: Step):
        """Fill the gradients; may return values to log with the step."""
        terms["loss"].backward()

    def objective_gradient(self, terms: dict, params: list, retain_graph: bool = False) -> list:
        """The gradient the update follows, one tensor per parameter (G-effect diagnostics)."""
        grads = torch.autograd.grad(terms["loss"], params, retain_graph=retain_graph, allow_unused=True)
        return [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]


def _coerce(key, value, default):
    """Command-line strings to the type of the default."""
    if not isinstance(value, str) or isinstance(default, str):
        return value
    if isinstance(default, bool):
        if value.lower() not in BOOLEANS:
            raise UldError(f"hyperparameter {key} must be true or false, got {value!r}")
        return BOOLEANS[value.lower()]
    try:
        return type(default)(value)
    except ValueError:
        raise UldError(f"hyperparameter {key} must be a {type(default).__name__}, got {value!r}") from None
