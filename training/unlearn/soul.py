"""SOUL (Jia et al. 2024): an unlearning loss (graddiff or npo) minimised with Sophia, a
clipped second-order update (sophia.py).

The diagonal Hessian estimate is Gauss-Newton-Bartlett (Sophia-G): every `hessian_every`
steps, labels are sampled from the model's own next-token distribution at the answer
positions of the step's forget and retain batches, and h_hat = N * grad(CE(sampled))^2.
It estimates the curvature of the model's predictive distribution, is never negative, and
does not depend on the sign of the loss: ascent terms make the loss's own Hessian
indefinite, and the squared minibatch gradient that SOUL's released code uses instead
tracks the step size, which turns the update into sign descent with momentum. It costs
one extra backward every `hessian_every` steps, reusing the step's forward pass.

The estimator alone does not keep the update off the clip: rho * h must also reach |m|.
On tofu-mini (SmolLM2, LoRA r 32, batch 8: ~600 answer tokens a step, against the ~490K tokens of
the GPT-2 runs Sophia's rho 0.04 was set for) every coordinate hit the clip from step 2 on
(BENCHMARKS.md), so with these defaults this is sign descent with momentum as well. The
training log records that share each step (`clipped`); a larger rho clips fewer coordinates.
"""
import torch
import torch.nn.functional as F

from uld_serve.core.errors import UldError

from .base import Method, register
from .graddiff import GradDiff
from .npo import NPO
from .sophia import Sophia

INNER = {"graddiff": GradDiff, "npo": NPO}


@register
class SOUL(Method):
    name = "soul"
    defaults = {"loss": "graddiff", "beta": 0.1, "rho": 0.04, "hessian_every": 10, "beta1": 0.965, "beta2": 0.99}

    def validate(self):
        if self.loss not in INNER:
            raise UldError(f"soul's loss must be one of {', '.join(INNER)}, got {self.loss!r}")
        if self.hessian_every < 1 or not self.rho > 0 or not 0 <= self.beta1 < 1 or not 0 <= self.beta2 < 1:
            raise UldError("soul needs hessian_every >= 1, rho > 0 and beta1, beta2 in [0, 1)")
        shared = {k: self.params[k] for k in ("forget_weight", "retain_weight", "retain_loss")}
        self.inner = INNER[self.loss](**shared, **({"beta": self.beta} if self.loss == "npo" else {}))

    @property
    def needs_reference(self):
        return self.inner.needs_reference

    def forget_term(self, step):
        return self.inner.forget_term(step)

    def retain_term(self, step):
        return self.inner.retain_term(step)

    def make_optimizer(self, params, lr, weight_decay):
        self.optimizer = Sophia(params, lr=lr, betas=(self.beta1, self.beta2), rho=self.rho, weight_decay=weight_decay)
        return self.optimizer

    def backward(self, terms, params, step_index, step):
        if step_index % self.hessian_every == 0:
            self.optimizer.update_hessian(gauss_newton_bartlett(step, params, seed=step_index))
        terms["loss"].backward()


def gauss_newton_bartlett(step, params, seed: int) -> list:
    """h_hat = N * (d/dtheta mean CE(logits, y_hat))^2 with y_hat ~ softmax(logits)."""
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for which in ("forget", "retain"):
        logits = step.logits(which).float()
        sampled = torch.multinomial(F.softmax(logits.detach(), -1), 1, generator=generator)[:, 0]
        total = total + F.cross_entropy(logits, sampled, reduction="sum")
        count += len(logits)
    grads = torch.autograd.grad(total / max(count, 1), params, retain_graph=True, allow_unused=True)
    return [count * g * g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
