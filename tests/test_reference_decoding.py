import pytest
import torch

from uld_kernels import relative_top_mask
from uld_serve.core.errors import UldError
from uld_serve.core.requests import GenerationRequest
from uld_serve.reference import UldModel
from uld_serve.core.tofu import chat_prompt_ids

QUESTIONS = ["Who wrote Hamlet?", "What genre does Hsiao Yun-Hwa write in, and what is her best-known book?", "Hi"]


@pytest.fixture(scope="module")
def engine(tiny_target, forget_sets):
    return UldModel(tiny_target, forget_sets)


def prompts(engine):
    return [chat_prompt_ids(engine.tokenizer, q) for q in QUESTIONS]


def hf_greedy(engine, prompt_ids, n, **generate_kwargs):
    tok = engine.tokenizer
    width = max(map(len, prompt_ids))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompt_ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
    out = engine.target.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, min_new_tokens=n,
                                 **generate_kwargs)
    return out[:, width:].tolist()


def test_greedy_answers_decode_what_they_are_asked_with(engine):
    """The evaluation's greedy answers: the request's alpha and length, no repetition penalty, and
    TOFU's system prompt or none."""
    from uld_serve.eval.scoring import greedy_answers

    for system in ("You are a helpful assistant.", None):
        rows = [chat_prompt_ids(engine.tokenizer, q, system) for q in QUESTIONS]
        want = engine.generate([GenerationRequest(x, "f1", alpha=1.5, max_new_tokens=5) for x in rows])
        got = greedy_answers(engine, QUESTIONS, "f1", 1.5, max_new_tokens=5, system=system)
        assert got == [engine.tokenizer.decode(t, skip_special_tokens=True).strip() for t in want]
    assert all(len(t) <= 5 for t in want)


def test_alpha_zero_is_exactly_the_target(engine):
    p = prompts(engine)
    expected = hf_greedy(engine, p, 12)
    plain = engine.generate([GenerationRequest(x, None, max_new_tokens=12) for x in p])
    zero = engine.generate([GenerationRequest(x, "f1", alpha=0.0, max_new_tokens=12) for x in p])
    assert plain == expected
    assert zero == expected


def test_mixed_batch_equals_requests_one_by_one(engine):
    p = prompts(engine)
    requests = [GenerationRequest(p[0], None, max_new_tokens=10), GenerationRequest(p[1], "f1", max_new_tokens=10),
                GenerationRequest(p[2], "f2", alpha=2.0, max_new_tokens=10), GenerationRequest(p[1], "f2", max_new_tokens=6),
                GenerationRequest(p[2], None, max_new_tokens=10)]
    together = engine.generate(requests)
    alone = [engine.generate([r])[0] for r in requests]
    assert together == alone
    assert len(together[3]) == 6


def test_unlearning_changes_the_output(engine):
    p = prompts(engine)
    plain = engine.generate([GenerationRequest(x, None, max_new_tokens=10) for x in p])
    uld = engine.generate([GenerationRequest(x, "f1", alpha=3.0, max_new_tokens=10) for x in p])
    assert plain != uld


def test_greedy_step_is_the_filtered_difference(engine):
    """One decode step by hand: argmax of t - alpha*a over the target's relative-top set."""
    p = prompts(engine)[1]
    ids = torch.tensor([p], device=engine.device)
    t = engine.target(input_ids=ids).logits[0, -1]
    a = engine._assistant(engine.forget_sets["f1"])(input_ids=ids).logits[0, -1]
    keep = relative_top_mask(t, 0.01)
    served = torch.where(keep, t - 2.0 * a, float("-inf"))
    token = engine.generate([GenerationRequest(p, "f1", alpha=2.0, max_new_tokens=1)])[0][0]
    assert token == int(served.argmax())


def test_a_repetition_penalty_is_transformers_on_the_target_and_follows_the_difference(engine):
    """On the target alone the penalty decodes as transformers' repetition_penalty does (prompt
    and output tokens); with a forget set it applies to the served difference, as vLLM's
    sampler applies it after the ULD logits processor."""
    p = prompts(engine)
    for penalty in (1.5, 0.5):  # below 1 favours seen tokens: the tiny target then answers otherwise
        penalized = [engine.generate([GenerationRequest(x, None, repetition_penalty=penalty, max_new_tokens=12)])[0] for x in p]
        assert penalized == [hf_greedy(engine, [x], 12, repetition_penalty=penalty)[0] for x in p]  # one prompt each: no padding
    assert penalized != engine.generate([GenerationRequest(x, None, max_new_tokens=12) for x in p])
    ids = list(p[0])  # decoded by hand, without a KV cache
    for _ in range(8):
        x = torch.tensor([ids], device=engine.device)
        t = engine.target(input_ids=x).logits[0, -1]
        a = engine._assistant(engine.forget_sets["f1"])(input_ids=x).logits[0, -1]
        served = torch.where(relative_top_mask(t, 0.01), t - 2.0 * a, float("-inf"))
        seen = torch.zeros_like(served, dtype=torch.bool)
        seen[ids] = True  # the prompt and the output so far
        ids.append(int(torch.where(seen, torch.where(served > 0, served / 0.5, served * 0.5), served).argmax()))
    uld = [GenerationRequest(p[0], "f1", alpha=2.0, repetition_penalty=penalty, max_new_tokens=8) for penalty in (0.5, None)]
    with_penalty, without = engine.generate(uld)
    assert with_penalty == ids[len(p[0]):]
    assert with_penalty != without


def test_frequency_and_presence_penalties_follow_the_difference_on_output_tokens(engine):
    """As vLLM's sampler applies them after the ULD logits processor: minus the frequency
    penalty per time and the presence penalty once for a token already in the output (the prompt
    does not count)."""
    p = prompts(engine)
    ids, out = list(p[2]), []  # decoded by hand, without a KV cache
    for _ in range(8):
        x = torch.tensor([ids], device=engine.device)
        t = engine.target(input_ids=x).logits[0, -1]
        a = engine._assistant(engine.forget_sets["f1"])(input_ids=x).logits[0, -1]
        served = torch.where(relative_top_mask(t, 0.01), t - 0.5 * a, float("-inf"))
        counts = torch.zeros_like(served).index_add_(0, torch.tensor(out, dtype=torch.long), torch.ones(len(out)))
        out.append(int((served + 2.0 * counts + 2.0 * (counts > 0)).argmax()))
        ids.append(out[-1])
    # negative: the tiny target's greedy output repeats no token, so only favouring repeats shows
    penalized, plain = engine.generate([GenerationRequest(p[2], "f1", alpha=0.5, frequency_penalty=-2.0, presence_penalty=-2.0,
                                                          max_new_tokens=8),
                                        GenerationRequest(p[2], "f1", alpha=0.5, max_new_tokens=8)])
    assert penalized == out
    assert penalized != plain


@pytest.mark.parametrize("mode", ["score", "score_anchored"])
def test_scoring_at_chosen_positions_equals_the_full_forward(engine, mode):
    tok = engine.tokenizer
    rows = [chat_prompt_ids(tok, q) for q in QUESTIONS]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    positions = mask.bool() & (torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.5)
    for forget_set in (None, "f1", "f2"):
        full = engine.score_logits(ids, mask, forget_set, positions=None, mode=mode)
        chosen = engine.score_logits(ids, mask, forget_set, positions=positions, mode=mode)
        assert chosen.shape == (int(positions.sum()), full.shape[-1])
        assert torch.allclose(chosen, full[positions.to(full.device)], rtol=1e-5, atol=1e-5), forget_set


def test_sampling_is_seeded_and_stays_inside_the_filter(engine):
    p = prompts(engine)[0]
    request = GenerationRequest(p, "f1", alpha=1.0, max_new_tokens=1, temperature=1.0, top_p=0.95, seed=7)
    firsts = {engine.generate([request])[0][0] for _ in range(3)}
    assert len(firsts) == 1
    ids = torch.tensor([p], device=engine.device)
    keep = relative_top_mask(engine.target(input_ids=ids).logits[0, -1], 0.01)
    for seed in range(20):
        request.seed = seed
        assert keep[engine.generate([request])[0][0]]
    tiny_p = GenerationRequest(p, "f1", alpha=1.0, max_new_tokens=5, temperature=1.0, top_p=1e-6, seed=3)
    greedy = GenerationRequest(p, "f1", alpha=1.0, max_new_tokens=5)
    assert engine.generate([tiny_p]) == engine.generate([greedy])


def test_unknown_forget_set(engine):
    with pytest.raises(UldError, match="unknown forget set 'nope'; known forget sets: f1, f2"):
        engine.generate([GenerationRequest([1, 2], "nope")])


def test_forget_set_for_another_base_is_refused(tiny_base, forget_sets):
    with pytest.raises(UldError, match="was trained for base model"):
        UldModel(tiny_base, {"f1": forget_sets["f1"]})


@pytest.mark.parametrize("mode", ["score", "score_anchored"])
def test_answers_sharing_a_prompt_score_as_separate_forwards(engine, mode):
    from uld_serve.eval.scoring import score_pairs

    answers = ["Shakespeare.", "It was written by William Shakespeare around 1600.", "Marlowe", "A"]
    pairs = [(q, a) for q in QUESTIONS for a in answers] + [("Who wrote Hamlet?", "Once more.")]
    for forget_set in (None, "f1", "f2"):
        shared = score_pairs(engine, pairs, forget_set, batch_size=6, mode=mode)
        separate = score_pairs(engine, pairs, forget_set, batch_size=6, mode=mode, share_prompts=False)
        for s, p in zip(shared, separate):
            assert s["avg_loss"] == pytest.approx(p["avg_loss"], rel=1e-5)
            assert s["token_logprobs"] == pytest.approx(p["token_logprobs"], rel=1e-5, abs=1e-5)
            assert s["matches"] == p["matches"]


@pytest.mark.parametrize("forget_set,mode", [(None, "score"), ("f1", "score"), ("f1", "score_anchored")])
def test_bf16_scoring_agrees_with_fp32(engine, tiny_target, forget_sets, forget_set, mode):
    """`uld eval tofu --dtype bf16` scores answers in bf16: every answer's mean loss stays within
    1% of fp32's (greedy answers are not compared: bf16 may break near-ties the other way)."""
    from uld_serve.core.tofu import load_qa
    from uld_serve.eval.scoring import score_pairs

    pairs = [(qa.question, qa.answer) for qa in load_qa("tofu:forget01")[:12]]
    bf16 = UldModel(tiny_target, forget_sets, dtype=torch.bfloat16)
    full = [r["avg_loss"] for r in score_pairs(engine, pairs, forget_set, mode=mode)]
    half = [r["avg_loss"] for r in score_pairs(bf16, pairs, forget_set, mode=mode)]
    assert half == pytest.approx(full, rel=1e-2)
