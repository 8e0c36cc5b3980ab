"""WGA, weighted gradient ascent (Wang et al. 2025, the G-effect paper): token-wise ascent
with each token's NLL weighted by p(token)^beta (held constant), so tokens already
forgotten stop pushing. Their released default beta is 5."""
from uld_serve.core.errors import UldError

from .base import Method, register
from .objectives import token_nll, weighted_token_ascent


@register
class WGA(Method):
    name = "wga"
    defaults = {"beta": 5.0}

    def validate(self):
        if not self.beta >= 0:
            raise UldError("beta must be non-negative")

    def forget_term(self, step):
        nll, mask = token_nll(step.logits("forget"), step.labels("forget"))
        return weighted_token_ascent(nll, mask, (-nll).exp() ** self.beta)
