"""SimNPO (Fan et al. 2024): NPO without the reference model, on the length-normalised NLL:
-2/beta * log sigmoid(beta * (NLL(y|x) / |y| - delta)). open-unlearning's defaults."""
import torch.nn.functional as F

from .base import Method, register
from .objectives import token_nll


@register
class SimNPO(Method):
    name = "simnpo"
    positive = ("beta",)
    defaults = {"beta": 4.5, "delta": 0.0, "forget_weight": 0.125}

    def forget_term(self, step):
        nll, mask = token_nll(step.logits("forget"), step.labels("forget"))
        per_answer = (nll * mask).sum(-1) / mask.sum(-1).clamp(min=1) - self.delta
        return -F.logsigmoid(self.beta * per_answer).mean() * 2 / self.beta
