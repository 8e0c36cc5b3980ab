"""The alpha curve (one forward, any alpha) against whole-row `logit_difference` scoring."""
import math

import pytest
import torch

from uld_kernels import logit_difference
from uld_serve.eval.alpha_curve import AlphaCurve, _answer_logprobs, _compress
from uld_serve.eval.tofu_eval import SCORING_MODES


def whole_row_logprobs(t, a, tokens, alpha, relative_top, scoring):
    logits = logit_difference(t, a, alpha, relative_top, mode=SCORING_MODES[scoring])
    return torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)


@pytest.mark.parametrize("scoring", ["anchored", "paper"])
def test_compressed_rows_give_the_whole_rows_logprobs(scoring):
    gen = torch.Generator().manual_seed(0)
    vocab = 1000
    t = torch.randn(6, vocab, generator=gen) * 3
    t[1] = 0.5  # a flat row: every token ties, all are kept
    t[2, 500:] = -math.inf  # -inf entries are never kept
    t[3, :40] = t[3].max() + 1  # a block of ties at the top
    a = torch.randn(6, vocab, generator=gen) * 5 + 20  # the assistant's logits sit at a high level
    tokens = torch.tensor([t[0].argmax(), 7, 3, 10, t[4].argmin(), t[5].topk(3).indices[-1]])
    rows = _compress(t, a, tokens, 0.05)
    for alpha in (0.0, 0.3, 1.0, 2.5):
        expected = whole_row_logprobs(t, a, tokens, alpha, 0.05, scoring)
        assert torch.allclose(_answer_logprobs(rows, alpha, scoring), expected, rtol=1e-5, atol=1e-5), alpha


def test_curve_matches_score_pairs_on_a_forget_set(tiny_target, forget_sets):
    from uld_serve.eval.scoring import score_pairs
    from uld_serve.reference import UldModel
    from uld_serve.core.tofu import load_qa

    model = UldModel(tiny_target, {"f1": forget_sets["f1"]})
    pairs = [(qa.question, qa.answer) for qa in load_qa("tofu:forget01")][:6]
    curve = AlphaCurve(model, "f1", pairs, batch_size=4)
    for scoring in ("anchored", "paper"):
        for alpha in (0.0, 0.75, 2.0):
            expected = [r["avg_loss"] for r in score_pairs(model, pairs, "f1", alpha, mode=SCORING_MODES[scoring])]
            assert curve.losses(alpha, scoring) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert curve.losses(2.0, "paper") != pytest.approx(curve.losses(0.0, "paper"), rel=1e-3)  # alpha moves them


def test_first_crossing_finds_the_smallest_alpha_to_tolerance():
    from uld_serve.core.errors import UldError
    from uld_serve.eval.calibrate import TOLERANCE, first_crossing

    def probability(alpha):  # decays, with a plateau between 1 and 2 that bisection must not skip into
        return math.exp(-2 * min(alpha, 1.0) - 3 * max(alpha - 2.0, 0.0))

    level = math.exp(-1.5)
    alpha = first_crossing(probability, level)
    assert 0.75 <= alpha <= 0.75 + TOLERANCE and probability(alpha) <= level
    assert first_crossing(probability, 2.0) == 0.0  # already below the level: alpha 0
    assert 2.5 <= first_crossing(probability, math.exp(-3.5)) <= 2.5 + TOLERANCE
    with pytest.raises(UldError, match="has not learned the forget set"):
        first_crossing(probability, 1e-30)


def test_calibrated_alpha_brings_the_forget_answers_to_the_unseen_level(tiny_target, forget_sets):
    from uld_serve.eval.calibrate import TOLERANCE, calibrate
    from uld_serve.reference import UldModel
    from uld_serve.core.tofu import load_qa

    model = UldModel(tiny_target, {"f1": forget_sets["f1"]})
    forget = [(qa.question, qa.answer) for qa in load_qa("tofu:forget01")][:6]
    unseen = [(qa.question, qa.answer) for qa in load_qa("tofu:retain90[100:106]")]
    result = calibrate(model, "f1", forget, unseen, scoring="paper")
    curve = AlphaCurve(model, "f1", forget)
    assert result["forget_prob"] == pytest.approx(curve.mean_probability(result["alpha"], "paper"))
    assert result["forget_prob"] <= result["unseen_prob"]
    assert result["alpha"] > 0  # the forget answers start above the unseen level, so some alpha is needed
    assert curve.mean_probability(result["alpha"] - TOLERANCE, "paper") > result["unseen_prob"]
