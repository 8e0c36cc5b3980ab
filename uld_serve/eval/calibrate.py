"""`uld calibrate-alpha`: the smallest alpha at which a forget set's own answers are no more
likely than answers the target never learned.

An operator holds the forget set and can write questions about entities the target never
saw (for TOFU, authors outside its fine-tuning data). The level to reach is the target's
mean answer probability on those; alpha is then found on the forget set's answers (its
training data), with no retain model and no truth ratios, so forget quality is not looked at.
"""
from pathlib import Path
from typing import Optional

from ..core.settings import ALPHA_RANGE
from ..core.errors import UldError
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


def calibrate_forget_set(target: str, forget_set, unseen: str, forget: Optional[str] = None, scoring: str = "anchored",
                         write: bool = False, device: str = "auto") -> dict:
    """Calibrate a ULD forget-set artifact on `unseen` QA (a data spec) and its forget answers
    (default: the data it was trained on); with `write`, make the alpha its manifest's default
    and record how it was found there."""
    from tqdm import tqdm

    from ..core.artifact import MANIFEST, read_manifest
    from ..core.atomic import write_json_atomic
    from ..core.tofu import load_qa
    from ..reference import UldModel
    from .tofu_eval import check_scoring

    check_scoring(scoring)
    forget_set = Path(forget_set)
    manifest = read_manifest(forget_set)
    if manifest["kind"] != "uld-assistant":
        raise UldError(f"{forget_set} is a {manifest['kind']} forget set, served with alpha 0; only ULD assistants take an alpha")
    forget = forget or manifest.get("forget", {}).get("spec")
    if not forget:
        raise UldError(f"{forget_set}'s manifest names no forget data; pass --forget")
    forget_pairs = [(qa.question, qa.answer) for qa in load_qa(forget)]
    unseen_pairs = [(qa.question, qa.answer) for qa in load_qa(unseen)]
    model = UldModel(target, {"forget": str(forget_set)}, device=device)
    with tqdm(total=len(forget_pairs) + len(unseen_pairs), desc="calibrate alpha", unit="answer") as bar:
        result = {**calibrate(model, "forget", forget_pairs, unseen_pairs, scoring, bar.update), "forget": forget, "unseen": unseen}
    if write:
        write_json_atomic(forget_set / MANIFEST, {**manifest, "alpha": result["alpha"], "calibration": result})
    return result
