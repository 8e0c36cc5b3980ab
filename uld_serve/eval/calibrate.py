"""`uld calibrate-alpha`: the smallest alpha at which a forget set's own answers are no more
likely than answers the target never learned.

An operator holds the forget set and can write questions about entities the target never
saw (for TOFU, authors outside its fine-tuning data). The level to reach is the target's
mean answer probability on those; alpha is then found on the forget set's answers (its
training data), with no retain model and no truth ratios, so forget quality is not looked at.

Probability is not greedy decoding: a sharply trained assistant can bring the forget answers'
probability down to the unseen level while the greedy answer still says what was to be forgotten.
So the operator may also name what must never be said (`--forbid`, e.g. the forgotten authors'
names): from the probability's alpha up, the forget questions are answered greedily, as served
(with the repetition penalty the manifest names), under every prompt form a client may send
(core/tofu.py PROMPT_FORMS), and the first alpha on the grid at which no answer says a
forbidden string its question did not contain is the one chosen. Greedy leaks need not vanish
monotonically with alpha or survive a change of penalty: set the served penalty first.
"""
from pathlib import Path
from typing import Optional

from ..core.settings import ALPHA_RANGE, SERVED_PENALTIES
from ..core.errors import UldError
from ..core.tofu import PROMPT_FORMS
from .alpha_curve import AlphaCurve
from .scoring import greedy_answers, mean_answer_probability

GRID_STEP = 0.05  # the first crossing is bracketed on this grid, then bisected
TOLERANCE = 0.005
NAMES_SCAN = 1.0  # how far above the probability's alpha the greedy check looks
NAMES_MAX_TOKENS = 64


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


def leaks(questions, answers, forbidden) -> int:
    """How many answers say a forbidden string (case-insensitive) that their question does not."""
    return sum(any(f.lower() in a.lower() and f.lower() not in q.lower() for f in forbidden) for q, a in zip(questions, answers))


def first_clean(leak_count, start: float, scan: float = NAMES_SCAN) -> float:
    """The first alpha of start, start + GRID_STEP, ... (at most start + scan, within ALPHA_RANGE)
    with leak_count(alpha) == 0. Greedy answers need not change monotonically with alpha, so the
    grid is walked, not bisected."""
    last = min(start + scan, ALPHA_RANGE[1])
    for step in range(int(round((last - start) / GRID_STEP)) + 1):
        alpha = round(start + step * GRID_STEP, 6) if step else start
        if leak_count(alpha) == 0:
            return alpha
    raise UldError(f"up to alpha {last:g} greedy answers to the forget questions still say a forbidden string; "
                   "the assistant does not forget it when decoding greedily (train it longer or on more prompt forms)")


def calibrate(model, name, forget_pairs, unseen_pairs, scoring="anchored", progress=None, forbidden=(),
              max_new_tokens=NAMES_MAX_TOKENS) -> dict:
    level = mean_answer_probability(model, unseen_pairs, progress=progress)
    curve = AlphaCurve(model, name, forget_pairs, progress=progress)
    alpha = first_crossing(lambda a: curve.mean_probability(a, scoring), level)
    result = {"alpha": alpha, "scoring": scoring, "unseen_prob": level,
              "forget_prob_at_0": curve.mean_probability(0.0, scoring), "forget_prob": curve.mean_probability(alpha, scoring)}
    if forbidden:
        questions = [q for q, _ in forget_pairs]
        counts = {}

        def leak_count(a):
            counts[a] = sum(leaks(questions, greedy_answers(model, questions, name, a, max_new_tokens=max_new_tokens,
                                                            progress=progress, system=system), forbidden)
                            for system in PROMPT_FORMS.values())
            return counts[a]

        served = model.settings(name)  # its penalties are the ones the check decoded with
        result.update(probability_alpha=alpha, alpha=first_clean(leak_count, alpha), forbidden=list(forbidden),
                      prompt_forms=list(PROMPT_FORMS), leaks_by_alpha=counts,
                      **{key: getattr(served, key) for key in SERVED_PENALTIES})
    return result


def calibrate_forget_set(target: str, forget_set, unseen: str, forget: Optional[str] = None, scoring: str = "anchored",
                         write: bool = False, device: str = "auto", forbidden=()) -> dict:
    """Calibrate a ULD forget-set artifact on `unseen` QA (a data spec) and its forget answers
    (default: the data it was trained on), then, with `forbidden` strings, check greedy answers
    as the module says; with `write`, make the alpha its manifest's default and record how it was
    found there."""
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
    forbidden = [f.strip() for f in forbidden if f.strip()]
    with tqdm(desc="calibrate alpha", unit="answer") as bar:
        result = {**calibrate(model, "forget", forget_pairs, unseen_pairs, scoring, bar.update, forbidden),
                  "forget": forget, "unseen": unseen}
    if write:
        write_json_atomic(forget_set / MANIFEST, {**manifest, "alpha": result["alpha"], "calibration": result})
    return result
