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
            scored = score_pairs(model, pairs, "f1", alpha, mode=SCORING_MODES[scoring])
            assert curve.losses(alpha, scoring) == pytest.approx([r["avg_loss"] for r in scored], rel=1e-5, abs=1e-6)
            for lp, r in zip(curve.token_logprobs(alpha, scoring), scored):  # what the min-k MIA reads
                assert lp == pytest.approx(r["token_logprobs"], rel=1e-5, abs=1e-5)
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


def test_leaks_count_forbidden_strings_the_question_did_not_say():
    from uld_serve.eval.calibrate import leaks

    questions = ["Who wrote Dune?", "Is Abilov a poet?", "Where was he born?"]
    answers = ["Nikolai ABILOV wrote it.", "Abilov is a poet.", "In Astana."]
    assert leaks(questions, answers, ["Abilov"]) == 1  # the second question named him itself
    assert leaks(questions, answers, ["Abilov", "astana"]) == 2
    assert leaks(questions, answers, ["Herbert"]) == 0


def test_the_greedy_check_walks_the_grid_up_from_the_probabilitys_alpha():
    from uld_serve.core.errors import UldError
    from uld_serve.eval.calibrate import GRID_STEP, first_clean

    asked = []

    def leak_count(alpha):  # leaks vanish at 0.9, come back at 1.0 (greedy is not monotone), vanish again later
        asked.append(alpha)
        return 0 if alpha == 0.9 or alpha >= 1.3 else 2

    assert first_clean(leak_count, 0.7) == 0.9 and asked == [0.7, 0.75, 0.8, 0.85, 0.9]
    assert first_clean(leak_count, 0.95) == 1.3
    assert first_clean(leak_count, 0.9) == 0.9
    with pytest.raises(UldError, match="up to alpha 1.2 greedy answers to the forget questions still say a forbidden string"):
        first_clean(leak_count, 0.95, scan=0.25)
    assert GRID_STEP == 0.05


def test_calibration_raises_alpha_until_no_greedy_answer_says_a_forbidden_word(tiny_target, forget_sets):
    from uld_serve.core.tofu import PROMPT_FORMS, load_qa
    from uld_serve.eval.calibrate import calibrate, leaks
    from uld_serve.eval.scoring import greedy_answers
    from uld_serve.reference import UldModel

    model = UldModel(tiny_target, {"f1": forget_sets["f1"]})
    forget = [(qa.question, qa.answer) for qa in load_qa("tofu:forget01")][:4]
    unseen = [(qa.question, qa.answer) for qa in load_qa("tofu:retain90[100:104]")]
    questions = [q for q, _ in forget]

    def answers(alpha):
        return [a for system in PROMPT_FORMS.values()
                for a in greedy_answers(model, questions, "f1", alpha, max_new_tokens=8, system=system)]

    plain = calibrate(model, "f1", forget, unseen, scoring="paper")
    said = [w for a in answers(plain["alpha"]) for w in a.split() if w.isalpha() and len(w) > 3
            and w.lower() not in " ".join(questions).lower()]
    word = min(said, key=said.count)  # a word some greedy answer says at the probability's alpha
    result = calibrate(model, "f1", forget, unseen, scoring="paper", forbidden=[word], max_new_tokens=8)
    assert result["probability_alpha"] == plain["alpha"] < result["alpha"]
    assert result["leaks_by_alpha"][plain["alpha"]] > 0 and result["leaks_by_alpha"][result["alpha"]] == 0
    assert leaks(questions * len(PROMPT_FORMS), answers(result["alpha"]), [word]) == 0
