import math

import pytest
import torch

from uld_kernels import logit_difference, relative_top_mask

from helpers import brute_force_mask


def rows_under_test(vocab):
    g = torch.Generator().manual_seed(vocab)
    rows = [torch.randn(vocab, generator=g) * 3, torch.randn(vocab, generator=g) * 50, torch.zeros(vocab)]
    ties = torch.randn(vocab, generator=g)
    ties[: vocab // 10] = ties.max() - 0.5  # many tokens exactly at a candidate threshold
    rows.append(ties)
    with_inf = torch.randn(vocab, generator=g)
    with_inf[::3] = -math.inf
    rows.append(with_inf)
    return torch.stack(rows)


@pytest.mark.parametrize("vocab", [50, 1000, 32000])
@pytest.mark.parametrize("r", [0.01, 0.1, 0.5])
def test_mask_matches_brute_force(vocab, r):
    rows = rows_under_test(vocab)
    mask = relative_top_mask(rows, r)
    for row, got in zip(rows, mask):
        assert torch.equal(got, brute_force_mask(row, r))


def test_filter_keeps_plausible_tokens_only():
    # k = int(0.01 * 5) is 0, so at least the top token counts; the rest must lie within
    # log(0.01) = -4.6 of the top logit: 9 does, 4 does not
    row = torch.tensor([[10.0, 9.0, 4.0, 0.0, -5.0]])
    assert relative_top_mask(row, 0.01).tolist() == [[True, True, False, False, False]]
    # with r = 0.5 and V = 4, k = 2: the second-largest is a floor even below max + log r
    row = torch.tensor([[10.0, 2.0, 1.0, 0.0]])
    assert relative_top_mask(row, 0.5).tolist() == [[True, True, False, False]]


def test_serve_and_score_modes():
    torch.manual_seed(0)
    t, a = torch.randn(4, 300) * 4, torch.randn(4, 300)
    alpha = torch.tensor([0.0, 0.5, 1.0, 2.0])
    keep = relative_top_mask(t, 0.05)
    serve = logit_difference(t, a, alpha, 0.05, "serve")
    score = logit_difference(t, a, alpha, 0.05, "score")
    expected = t - alpha[:, None] * a
    assert torch.equal(serve[0], t[0]) and torch.equal(score[0], t[0])  # alpha 0: unchanged, nothing excluded
    for b in range(1, 4):
        assert torch.allclose(serve[b][keep[b]], expected[b][keep[b]])
        assert torch.all(serve[b][~keep[b]] == -math.inf)
        assert torch.equal(score[b][~keep[b]], t[b][~keep[b]])
        assert torch.allclose(score[b][keep[b]], expected[b][keep[b]])


def test_anchored_score_keeps_the_targets_mass_and_serves_the_served_distribution():
    torch.manual_seed(1)
    t, a = torch.randn(4, 400) * 4, torch.randn(4, 400) * 2 + 20  # an assistant around +20, as SmolLM2's
    t[3, ::7] = -math.inf
    alpha = torch.tensor([0.0, 0.75, 1.0, 2.0])
    keep = relative_top_mask(t, 0.05)
    anchored = logit_difference(t, a, alpha, 0.05, "score_anchored")
    served = logit_difference(t, a, alpha, 0.05, "serve")
    assert torch.equal(anchored[0], t[0])  # alpha 0: unchanged
    p_target, p_anchored = torch.softmax(t.double(), -1), torch.softmax(anchored.double(), -1)
    for b in range(1, 4):
        assert torch.equal(anchored[b][~keep[b]], t[b][~keep[b]])
        assert torch.allclose(p_anchored[b][keep[b]].sum(), p_target[b][keep[b]].sum(), rtol=1e-5)
        within = torch.softmax(anchored[b][keep[b]].double(), -1)
        assert torch.allclose(within, torch.softmax(served[b][keep[b]].double(), -1), rtol=1e-5)
    # a constant added to an assistant row changes nothing (the paper's "score" moves a lot)
    shifted = logit_difference(t, a - 20, alpha, 0.05, "score_anchored")
    assert torch.allclose(shifted, anchored, rtol=1e-5, atol=1e-4)
    paper, paper_shifted = logit_difference(t, a, alpha, 0.05, "score"), logit_difference(t, a - 20, alpha, 0.05, "score")
    assert not torch.allclose(torch.log_softmax(paper, -1), torch.log_softmax(paper_shifted, -1), atol=1.0)


def test_an_assistant_uniform_on_the_kept_tokens_scores_as_the_target():
    t = torch.randn(3, 500, generator=torch.Generator().manual_seed(2)) * 5
    constant = torch.full_like(t, 13.0)
    anchored = logit_difference(t, constant, 0.75, 0.01, "score_anchored")
    assert torch.allclose(torch.log_softmax(anchored, -1), torch.log_softmax(t, -1), atol=1e-5)


def test_low_precision_inputs_give_fp32():
    t, a = torch.randn(2, 64, dtype=torch.bfloat16), torch.randn(2, 64, dtype=torch.float16)
    out = logit_difference(t, a, 0.75, 0.1)
    assert out.dtype == torch.float32
    ref = logit_difference(t.float(), a.float(), 0.75, 0.1)
    assert torch.equal(out, ref)


def test_three_dimensional_inputs_take_per_sequence_alpha():
    t, a = torch.randn(2, 3, 100), torch.randn(2, 3, 100)
    out = logit_difference(t, a, torch.tensor([0.0, 1.0]), 0.1, "score")
    assert torch.equal(out[0], t[0])
    assert not torch.equal(out[1], t[1])


def test_bad_arguments():
    t = torch.randn(2, 10)
    with pytest.raises(ValueError, match="mode"):
        logit_difference(t, t, 1.0, mode="bogus")
    with pytest.raises(ValueError, match="shape"):
        logit_difference(t, torch.randn(2, 11), 1.0)
    with pytest.raises(ValueError, match="relative_top"):
        logit_difference(t, t, 1.0, relative_top=0.0)
    with pytest.raises(ValueError, match="alpha needs one value per row"):
        logit_difference(t, t, torch.ones(3))


def test_union_mask_covers_every_filter_in_the_range():
    from uld_kernels.torch_impl import filter_union_mask

    t = torch.randn(16, 5000, generator=torch.Generator().manual_seed(5)) * 3
    union = filter_union_mask(t, 0.005, 0.05)
    for r in (0.005, 0.01, 0.02, 0.05):
        assert torch.all(union | ~relative_top_mask(t, r))  # every kept token is a candidate
    assert torch.equal(filter_union_mask(t, 0.01, 0.01), relative_top_mask(t, 0.01))


def test_sparse_head_serves_what_the_dense_head_serves():
    from uld_kernels.sparse_head import assistant_logits_on_candidates

    g = torch.Generator().manual_seed(6)
    weight, hidden = torch.randn(3000, 64, generator=g), torch.randn(8, 64, generator=g)
    target = torch.randn(8, 3000, generator=g) * 4
    dense = hidden @ weight.T
    sparse = assistant_logits_on_candidates(target, hidden, weight, 0.01, 0.02)
    alpha = torch.linspace(0, 2, 8)
    for r in (0.01, 0.015, 0.02):
        want = logit_difference(target, dense, alpha, r, "serve")
        got = logit_difference(target, sparse, alpha, r, "serve")
        assert torch.equal(torch.isinf(got), torch.isinf(want))
        assert torch.allclose(got[torch.isfinite(want)], want[torch.isfinite(want)], atol=1e-4)


@pytest.mark.parametrize("vocab", [32000, 49152, 128256, 151936, 40001])
@pytest.mark.parametrize("r", [0.001, 0.01, 0.05])
def test_kth_largest_equals_a_full_top_k(vocab, r):
    from uld_kernels.torch_impl import kth_largest

    rows = rows_under_test(vocab)
    huge = torch.randn(2, vocab, generator=torch.Generator().manual_seed(1)) * 1e30
    rounded = torch.round(torch.randn(2, vocab, generator=torch.Generator().manual_seed(2)) * 2)  # ties everywhere
    peaked = torch.full((1, vocab), -math.inf)
    peaked[0, 7::vocab // 5] = 3.0  # a handful of finite entries, fewer than k
    rows = torch.cat([rows, huge, rounded, peaked])
    k = max(1, int(r * vocab))
    assert torch.equal(kth_largest(rows, k), rows.topk(k, dim=-1).values[:, -1:])
    assert torch.equal(kth_largest(rows[:, :-1], k), rows[:, :-1].topk(k, dim=-1).values[:, -1:])  # not contiguous
