"""Sophia (Liu et al. 2023) as SOUL uses it: momentum divided by a diagonal Hessian
estimate, clipped per coordinate.

    m  <- b1 m + (1 - b1) g
    h  <- b2 h + (1 - b2) h_hat          (only when an estimate is given, every k steps)
    theta <- theta - lr * wd * theta
    theta <- theta - lr * sign(m) * min(|m| / max(rho * h, eps), 1)

h_hat comes from the Gauss-Newton-Bartlett estimator (soul.py): labels sampled from the
model's own next-token distribution, h_hat = N * grad(CE(sampled))^2 over N tokens.
After each step `step_log["clipped"]` is the share of coordinates whose update hit the clip
(|m| >= rho h): there the step is lr * sign(m), sign descent with momentum.
"""
import torch


class Sophia(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-5, betas=(0.965, 0.99), rho=0.04, weight_decay=0.1, eps=1e-15):
        super().__init__(params, dict(lr=lr, betas=betas, rho=rho, weight_decay=weight_decay, eps=eps))
        self.step_log = {}

    @torch.no_grad()
    def update_hessian(self, estimates: list):
        """Fold in h_hat, one tensor per parameter in param-group order."""
        it = iter(estimates)
        for group in self.param_groups:
            _, beta2 = group["betas"]
            for p in group["params"]:
                h_hat = next(it)
                state = self._state(p)
                state["hessian"].mul_(beta2).add_(h_hat, alpha=1 - beta2)

    def _state(self, p):
        state = self.state[p]
        if not state:
            state["momentum"] = torch.zeros_like(p)
            state["hessian"] = torch.zeros_like(p)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        clipped, total = 0, 0
        for group in self.param_groups:
            beta1, _ = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                m, h = state["momentum"], state["hessian"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                ratio = m.abs() / (group["rho"] * h).clamp(min=group["eps"])
                clipped += (ratio >= 1).sum()  # a tensor: no device sync per parameter
                total += ratio.numel()
                p.add_(m.sign() * ratio.clamp_(max=1), alpha=-group["lr"])
        self.step_log = {"clipped": float(clipped) / max(total, 1)}
