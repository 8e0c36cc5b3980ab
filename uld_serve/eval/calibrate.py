"""`uld calibrate-alpha`: the smallest alpha at which a forget set's own answers are no more
likely than answers the target never learned.

An operator holds the forget set and can write questions about entities the target never
saw (for TOFU, authors outside its fine-tuning data). The level to reach is the target's
mean answer probability on those; alpha is then found on the forget set's answers (its
training data), with no retain model and no truth ratios, so forget quality is not looked at.
"""
from ..artifact import ALPHA_RANGE
from ..errors import UldError
from .alpha_curve import AlphaCurve
from .scoring import mean_answer_probability

GRID_STEP = 0.05  # the first crossing is bracketed on this grid, then bisected
TOLERANCE = 0.005


def first_crossing(probability, level: float, max_alpha: float = ALPHA_RANGE[1]) -> float:
    """The smallest alpha (to TOLERANCE) with probability(alpha) <= level: always a point where
    that was checked, so the returned alpha meets the level."""
    if probability(0.0) <= level:
        return 0.0
    low = 0.0
    for step in range(1, int(round(max_alpha / GRID_STEP)) + 1):
        high = round(step * GRID_STEP, 6)  # 0.15, not 0.15000000000000002
        if probability(high) <= level:
            while high - low > TOLERANCE:
                middle = (low + high) / 2
                low, high = (low, middle) if probability(middle) <= level else (middle, high)
            return high
        low = high
    raise UldError(f"even alpha {max_alpha:g} leaves the forget answers more likely ({probability(max_alpha):.3g}) "
                   f"than unseen answers ({level:.3g}); the assistant has not learned the forget set")


def calibrate(model, name, forget_pairs, unseen_pairs, scoring="anchored", progress=None) -> dict:
    level = mean_answer_probability(model, unseen_pairs, progress=progress)
    curve = AlphaCurve(model, name, forget_pairs, progress=progress)
    alpha = first_crossing(lambda a: curve.mean_probability(a, scoring), level)
    return {"alpha": alpha, "scoring": scoring, "unseen_prob": level,
            "forget_prob_at_0": curve.mean_probability(0.0, scoring), "forget_prob": curve.mean_probability(alpha, scoring)}
