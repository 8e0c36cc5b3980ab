"""Gradient difference: ascent on the forget answers, descent on retained data
(retain_loss=nll, open-unlearning's default) or KL to the original model (retain_loss=kl)."""
from .base import register
from .ga import GradientAscent


@register
class GradDiff(GradientAscent):
    name = "graddiff"
    defaults = {"retain_loss": "nll"}
