"""MOLLM's common descent direction and SOUL's Sophia step."""
import itertools

import pytest
import torch

from uld_training.unlearn.min_norm import common_descent_direction, min_norm_weights
from uld_training.unlearn.sophia import Sophia


def assert_descent(grads, tol=1e-9):
    d, weights = common_descent_direction(grads)
    assert weights.min() >= 0 and weights.sum().item() == pytest.approx(1.0)
    for g in grads:
        assert float(g.double() @ d) <= -float(d @ d) + tol * max(1.0, float(g.double() @ g.double()))
    return d, weights


@pytest.mark.parametrize("seed", range(5))
def test_descent_direction_on_random_gradients(seed):
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(200, generator=gen) * s for s in (1.0, 3.0, 0.2)]
    d, weights = assert_descent(grads)
    # exact: no point of a fine grid of the simplex has a smaller norm
    best = min(
        float(((a * grads[0] + b * grads[1] + (1 - a - b) * grads[2]).double() ** 2).sum())
        for a, b in itertools.product(torch.linspace(0, 1, 101).tolist(), repeat=2) if a + b <= 1 + 1e-12
    )
    assert float(d @ d) <= best + 1e-9


def test_descent_direction_on_nearly_parallel_gradients():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(300, generator=gen, dtype=torch.float64)
    grads = [g, 2 * g + 1e-7 * torch.randn(300, generator=gen, dtype=torch.float64),
             g + 1e-9 * torch.randn(300, generator=gen, dtype=torch.float64)]
    d, _ = assert_descent(grads)
    assert float(d @ d) == pytest.approx(float(g @ g), rel=1e-5)  # the shortest is (nearly) g itself


def test_two_gradients_closed_form():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    # min over w of |w g1 + (1-w) g2|^2: w = g2.(g2-g1) / |g1-g2|^2 = 4/5
    weights = min_norm_weights(torch.stack([g1, g2]) @ torch.stack([g1, g2]).T)
    assert weights.tolist() == pytest.approx([0.8, 0.2])
    assert_descent([g1, g2])


def test_opposite_gradients_give_no_step():
    d, _ = common_descent_direction([torch.tensor([1.0, 1.0]), torch.tensor([-1.0, -1.0])])
    assert torch.allclose(d, torch.zeros(2, dtype=torch.float64))


def test_normalised_direction_weighs_objectives_alike_whatever_their_scale():
    # orthogonal gradients: the raw min-norm weights go as 1 / ||g||^2, so the smallest
    # gradient takes nearly all the weight; the unit gradients' hull weighs them equally
    grads = [torch.tensor([1e-3, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 100.0])]
    _, raw = common_descent_direction(grads)
    assert raw[0] > 0.999
    d, weights = common_descent_direction(grads, normalize=True)
    assert weights.tolist() == pytest.approx([1 / 3] * 3)
    assert d.tolist() == pytest.approx([-1 / 3] * 3)


@pytest.mark.parametrize("seed", range(3))
def test_normalised_direction_descends_and_leaves_out_a_stationary_objective(seed):
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(200, generator=gen) * 1e-3, torch.zeros(200), torch.randn(200, generator=gen) * 50]
    d, weights = common_descent_direction(grads, normalize=True)
    assert weights[1] == 0 and weights.sum().item() == pytest.approx(1.0) and weights.min() >= 0
    assert float(d @ d) > 0  # the raw hull's min-norm point would be the zero gradient: no step
    for g in (grads[0], grads[2]):
        unit = g.double() / g.double().norm()
        assert float(unit @ d) <= -float(d @ d) + 1e-9
    zero, none = common_descent_direction([torch.zeros(5), torch.zeros(5)], normalize=True)
    assert not zero.any() and not none.any()


def test_sophia_step_by_hand():
    theta = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = Sophia([theta], lr=0.1, betas=(0.9, 0.95), rho=0.5, weight_decay=0.1)
    theta.grad = torch.tensor([0.1, -0.3, 0.0])
    opt.update_hessian([torch.tensor([0.5, 0.0, 2.0])])
    opt.step()
    # m = 0.1 g = [0.01, -0.03, 0]; h = 0.05 h_hat = [0.025, 0, 0.1]; decay: theta * (1 - 0.01)
    # ratio = min(|m| / max(rho h, eps), 1) = [0.8, 1 (h = 0: clipped), 0]; theta -= 0.1 sign(m) ratio
    assert theta.detach().tolist() == pytest.approx([0.99 - 0.08, -1.98 + 0.1, 0.495], abs=1e-7)
    state = opt.state[theta]
    assert state["momentum"].tolist() == pytest.approx([0.01, -0.03, 0.0])
    assert state["hessian"].tolist() == pytest.approx([0.025, 0.0, 0.1])
    assert opt.step_log == {"clipped": pytest.approx(1 / 3)}  # only the h = 0 coordinate hit the clip
