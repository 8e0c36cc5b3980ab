"""NPO (Zhang et al. 2024): -2/beta * log sigmoid(-beta * log(p_model(y|x) / p_original(y|x)))
per forget answer, with sequence log-likelihoods; plus the retain term."""
import torch.nn.functional as F

from .base import Method, register
from .objectives import sequence_nll


@register
class NPO(Method):
    name = "npo"
    positive = ("beta",)
    defaults = {"beta": 0.1}
    uses_reference = True

    def forget_term(self, step):
        log_ratio = sequence_nll(step.reference_logits("forget"), step.labels("forget")) - sequence_nll(
            step.logits("forget"), step.labels("forget"))
        return -F.logsigmoid(-self.beta * log_ratio).mean() * 2 / self.beta
