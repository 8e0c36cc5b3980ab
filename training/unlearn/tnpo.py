"""TNPO, token-wise NPO (the G-effect paper): NPO's loss on each answer token instead of the
whole answer. Its gradient is token ascent weighted by 2 p^beta / (p^beta + p_ref^beta)
(held constant); that weighted form is what is optimised, as in the authors' code."""
from .base import Method, register
from .objectives import token_nll, weighted_token_ascent


def npo_token_weights(nll, reference_nll, beta, extra_power=0.0):
    p, p_ref = (-nll).exp(), (-reference_nll).exp()
    return 2 * p ** (beta + extra_power) / (p**beta + p_ref**beta + 1e-5)


@register
class TNPO(Method):
    name = "tnpo"
    positive = ("beta",)
    defaults = {"beta": 4.0}
    uses_reference = True

    def weights(self, nll, reference_nll):
        return npo_token_weights(nll, reference_nll, self.beta)

    def forget_term(self, step):
        nll, mask = token_nll(step.logits("forget"), step.labels("forget"))
        reference_nll, _ = token_nll(step.reference_logits("forget"), step.labels("forget"))
        return weighted_token_ascent(nll, mask, self.weights(nll, reference_nll))
