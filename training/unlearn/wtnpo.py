"""WTNPO, weighted token-wise NPO (the G-effect paper): TNPO's token weights times p^alpha,
i.e. 2 p^(beta+alpha) / (p^beta + p_ref^beta); their defaults beta 4, alpha 1.5."""
from .base import register
from .tnpo import TNPO, npo_token_weights


@register
class WTNPO(TNPO):
    name = "wtnpo"
    defaults = {"beta": 4.0, "alpha": 1.5}

    def weights(self, nll, reference_nll):
        return npo_token_weights(nll, reference_nll, self.beta, extra_power=self.alpha)
