"""MOLLM (Pan et al. 2025): unlearning as three objectives, updated along their common
descent direction.

- forget: the unlearning cross-entropy -log(1 - p(y_t)) on forget answer tokens, which is
  bounded below by 0 and whose gradient does not explode the way ascent's -log p does;
- retain: NLL on retained answers;
- kl: KL(original || model) on retained answers.
Each step computes the three gradients and moves along the negative min-norm point of
their convex hull (min_norm.py). With `normalize` (off by default, an addition of ours) the
hull is that of the unit gradients: the raw hull's min-norm point is the KL gradient, zero at
the start where the model is the reference, so the exact direction starts at zero
(BENCHMARKS.md, "ULD against weight-level unlearning")."""
import torch

from .base import Method, register
from .min_norm import common_descent_direction
from .objectives import kl_to_reference, mean_nll, token_nll

OBJECTIVES = ("forget", "retain", "kl")


def unlearning_cross_entropy(logits, labels) -> torch.Tensor:
    nll, mask = token_nll(logits, labels)
    p = (-nll[mask]).exp().clamp(max=1 - 1e-6)
    return -torch.log1p(-p).mean()


@register
class MOLLM(Method):
    name = "mollm"
    weighted = False
    uses_reference = True
    defaults = {"normalize": False}

    def terms(self, step):
        forget = unlearning_cross_entropy(step.logits("forget"), step.labels("forget"))
        retain = mean_nll(step.logits("retain"), step.labels("retain"))
        kl = kl_to_reference(step.logits("retain"), step.reference_logits("retain"))
        return {"loss": forget + retain + kl, "forget": forget, "retain": retain, "kl": kl}

    def objective_gradient(self, terms, params, retain_graph=False):
        """-d, d the common descent direction: the optimizer subtracts what it is given."""
        grads = []
        for i, name in enumerate(OBJECTIVES):
            keep = retain_graph or i < len(OBJECTIVES) - 1
            parts = torch.autograd.grad(terms[name], params, retain_graph=keep, allow_unused=True)
            grads.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(parts, params)]))
        direction, weights = common_descent_direction(grads, normalize=self.normalize)
        self.last_step = {"d_norm": float(direction.norm()),
                          **{f"w_{name}": float(w) for name, w in zip(OBJECTIVES, weights)}}
        flat = (-direction).split([p.numel() for p in params])
        return [g.view_as(p).to(p.dtype) for g, p in zip(flat, params)]

    def backward(self, terms, params, step_index, step):
        """Logs the min-norm weights and ||d||: with d near 0 the step is Pareto-stationary
        and an Adam-style optimizer still moves by ~lr along whatever is left."""
        for p, g in zip(params, self.objective_gradient(terms, params)):
            p.grad = g
        return self.last_step
