"""Gradient ascent: maximise the NLL of the forget answers (no retain term)."""
from .base import Method, register
from .objectives import mean_nll


@register
class GradientAscent(Method):
    name = "ga"
    defaults = {"retain_loss": "none"}

    def forget_term(self, step):
        return -mean_nll(step.logits("forget"), step.labels("forget"))
