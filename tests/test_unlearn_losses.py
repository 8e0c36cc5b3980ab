"""Each weight-level method's loss against values computed by hand on a 3-token vocabulary."""
import math

import pytest
import torch

from uld_training.unlearn import Step, get_method
from uld_training.unlearn.mollm import unlearning_cross_entropy
from uld_training.batching import answer_mask

# One answer of two tokens: position 0 predicts token 0, position 1 predicts token 2.
LABELS = torch.tensor([[-100, 0, 2]])
FORGET = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [9.0, 9.0, 9.0]]])
REFERENCE = torch.zeros(1, 3, 3)  # the original model: uniform, p = 1/3
RETAIN = torch.tensor([[[0.0, 1.0, 0.0], [2.0, 0.0, 1.0], [0.0, 0.0, 0.0]]])

P = [math.e / (math.e + 2), 1 / (math.e**2 + 2)]  # p of each forget answer token
NLL = [-math.log(p) for p in P]


def packed(logits):
    """(B, T, V) logits -> the (N, V) rows at answer positions that objectives take."""
    return logits[:, :-1][answer_mask(LABELS)]


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def step(retain_reference=REFERENCE):
    batch = {"labels": LABELS}
    s = Step(model=None, forget=batch, retain=batch, reference=None)
    s._logits = {"forget": packed(FORGET).requires_grad_(True), "retain": packed(RETAIN).requires_grad_(True)}
    s._reference_logits = {"forget": packed(REFERENCE), "retain": packed(retain_reference)}
    return s


def retain_nll():
    lp = torch.log_softmax(RETAIN, -1)
    return -(lp[0, 0, 0] + lp[0, 1, 2]).item() / 2


def test_gradient_ascent_and_graddiff():
    assert get_method("ga").terms(step())["loss"].item() == pytest.approx(-sum(NLL) / 2, rel=1e-6)
    terms = get_method("graddiff").terms(step())
    assert terms["loss"].item() == pytest.approx(-sum(NLL) / 2 + retain_nll(), rel=1e-6)


def test_graddiff_kl_retain_term():
    reference = torch.tensor([[[1.0, 0.0, -1.0], [0.0, 0.0, 3.0], [0.0, 0.0, 0.0]]])
    terms = get_method("graddiff", {"retain_loss": "kl", "retain_weight": "2"}).terms(step(reference))
    kl = 0.0
    for t in range(2):
        q = torch.softmax(reference[0, t], -1)
        p = torch.softmax(RETAIN[0, t], -1)
        kl += float((q * (q.log() - p.log())).sum())
    assert terms["retain"].item() == pytest.approx(kl / 2, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(-sum(NLL) / 2 + 2 * kl / 2, rel=1e-5)


def test_npo():
    beta = 0.1
    log_ratio = sum(math.log(p) for p in P) - 2 * math.log(1 / 3)
    expected = -2 / beta * log_sigmoid(-beta * log_ratio)
    assert get_method("npo").terms(step())["forget"].item() == pytest.approx(expected, rel=1e-6)


def test_simnpo():
    beta, delta = 4.5, 0.2
    expected = -2 / beta * log_sigmoid(beta * (sum(NLL) / 2 - delta))
    terms = get_method("simnpo", {"delta": str(delta)}).terms(step())
    assert terms["forget"].item() == pytest.approx(expected, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(0.125 * expected + retain_nll(), rel=1e-6)


def test_wga_value_and_constant_weights():
    beta = 5.0
    s = step()
    loss = get_method("wga").terms(s)["forget"]
    assert loss.item() == pytest.approx(-sum(p**beta * n for p, n in zip(P, NLL)) / 2, rel=1e-5)
    loss.backward()
    # The weights are constants: the gradient is the weighted sum of each token's ascent gradient.
    logits = FORGET.clone().requires_grad_(True)
    lp = torch.log_softmax(logits, -1)
    (P[0] ** beta * lp[0, 0, 0] / 2 + P[1] ** beta * lp[0, 1, 2] / 2).backward()
    assert torch.allclose(s._logits["forget"].grad, packed(logits.grad), atol=1e-7)


@pytest.mark.parametrize("name,extra", [("tnpo", 0.0), ("wtnpo", 1.5)])
def test_token_wise_npo(name, extra):
    beta = 4.0
    w = [2 * p ** (beta + extra) / (p**beta + (1 / 3) ** beta + 1e-5) for p in P]
    expected = -(w[0] * NLL[0] + w[1] * NLL[1]) / 2
    assert get_method(name).terms(step())["forget"].item() == pytest.approx(expected, rel=1e-5)


def test_unlearning_cross_entropy():
    expected = -(math.log(1 - P[0]) + math.log(1 - P[1])) / 2
    assert unlearning_cross_entropy(packed(FORGET), LABELS).item() == pytest.approx(expected, rel=1e-6)
    terms = get_method("mollm").terms(step())
    assert set(terms) == {"loss", "forget", "retain", "kl"}


def test_soul_uses_the_chosen_loss():
    assert get_method("soul").terms(step())["loss"].item() == pytest.approx(get_method("graddiff").terms(step())["loss"].item())
    npo = get_method("soul", {"loss": "npo"}).terms(step())["forget"].item()
    assert npo == pytest.approx(get_method("npo").terms(step())["forget"].item())
