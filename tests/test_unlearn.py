"""`uld unlearn`: every method trains on tiny-random and writes an artifact that loads."""
import json

import pytest
import torch

from uld_serve.reference import UldModel
from uld_training.loop import TrainConfig
from uld_serve.core.errors import UldError
from uld_training.unlearn import METHODS, get_method
from uld_training.unlearn.run import Trainable, unlearn

from helpers import FAST, assert_user_error, uld

ALL = ["ga", "graddiff", "npo", "simnpo", "wga", "tnpo", "wtnpo", "mollm", "soul"]


def test_every_method_is_registered():
    assert sorted(METHODS) == sorted(ALL)


@pytest.fixture(scope="module")
def scorer(tiny_target):
    return UldModel(tiny_target)


def batch(model):
    ids = torch.tensor([model.tokenizer("Who wrote Hamlet? William Shakespeare.")["input_ids"]])
    return ids, torch.ones_like(ids)


@pytest.mark.parametrize("method", ALL)
def test_two_steps_and_the_artifact_loads(method, tiny_target, scorer, tmp_path):
    params = {"loss": "npo"} if method == "soul" else {}
    out = unlearn(method, params, str(tiny_target), "tofu:forget01", "tofu:retain90[:20]", tmp_path / method,
                  TrainConfig(max_steps=2, batch_size=4, lr=1e-2, precision="fp32"), Trainable(rank=8, lora_alpha=8))
    manifest = json.loads((out / "uld.json").read_text())
    assert manifest["kind"] == "weight-level" and manifest["alpha"] == 0.0 and manifest["method"] == method
    assert manifest["result"]["steps"] == 2 and manifest["result"]["trainable_parameters"] > 0
    assert manifest["result"]["steps_per_epoch"] == 10  # forget01's 40 answers in batches of 4
    scorer.add_forget_set(method, out)
    applied = scorer.settings(method, alpha=1.0)
    assert (applied.alpha, applied.relative_top) == (0.0, 0.01)  # weight-level sets are served with alpha 0
    ids, mask = batch(scorer)
    unlearned = scorer.score_logits(ids, mask, forget_set=method)
    assert not torch.allclose(unlearned, scorer.score_logits(ids, mask))  # two steps at lr 1e-2 moved the weights
    if method == "soul":  # Sophia logs the share of coordinates whose step hit the clip
        assert all(0 <= entry["clipped"] <= 1 for entry in json.loads((out / "training_log.json").read_text()))


def test_full_weights_artifact_is_a_target(tiny_target, tmp_path):
    out = unlearn("graddiff", {}, str(tiny_target), "tofu:forget01", "tofu:retain90[:20]", tmp_path / "full",
                  TrainConfig(max_steps=1, batch_size=4, lr=1e-3, precision="fp32"), Trainable(full=True))
    assert json.loads((out / "uld.json").read_text())["weights"] == "full"
    model = UldModel(out)  # served and evaluated as a target of its own
    ids, mask = batch(model)
    assert torch.isfinite(model.score_logits(ids, mask)).all()
    with pytest.raises(UldError, match="pass it as the target"):
        UldModel(tiny_target, {"full": out})


def test_cli_runs_a_method_and_refuses_bad_input(tiny_target, tmp_path):
    common = ["--target", tiny_target, "--forget", "tofu:forget01", "--retain", "tofu:retain90[:20]"]
    uld("unlearn", "--method", "npo", *common, "--out", tmp_path / "npo", "--param", "beta=0.5", *FAST)
    assert json.loads((tmp_path / "npo" / "uld.json").read_text())["method_params"]["beta"] == 0.5
    assert_user_error(uld("unlearn", "--method", "rmu", *common, "--out", tmp_path / "x", check=False), "unknown method 'rmu'")
    assert_user_error(uld("unlearn", "--method", "npo", *common, "--out", tmp_path / "x", "--param", "beta=abc", check=False),
                      "beta must be a float")
    assert_user_error(uld("unlearn", "--method", "npo", *common, "--out", tmp_path / "x", "--param", "gamma=1", check=False),
                      "no hyperparameter 'gamma'")
    assert_user_error(uld("unlearn", "--method", "npo", *common, "--out", tmp_path / "x", "--param", "beta=-1", check=False),
                      "beta must be positive")
    assert_user_error(uld("unlearn", "--method", "soul", *common, "--out", tmp_path / "x", "--param", "loss=ga", check=False),
                      "soul's loss must be one of")
    assert not (tmp_path / "x").exists()


def test_boolean_hyperparameters_take_true_or_false_only():
    assert get_method("mollm", {"normalize": "Yes"}).normalize is True
    assert get_method("mollm", {"normalize": "0"}).normalize is False
    with pytest.raises(UldError, match="normalize must be true or false, got 'maybe'"):
        get_method("mollm", {"normalize": "maybe"})


def test_mollm_logs_its_common_descent_weights(tiny_target, tmp_path):
    out = unlearn("mollm", {}, str(tiny_target), "tofu:forget01", "tofu:retain90[:20]", tmp_path / "mollm",
                  TrainConfig(max_steps=3, batch_size=4, lr=1e-2, precision="fp32"), Trainable(rank=8, lora_alpha=8))
    log = json.loads((out / "training_log.json").read_text())
    assert len(log) == 3
    for entry in log:
        weights = [entry[f"w_{name}"] for name in ("forget", "retain", "kl")]
        assert min(weights) >= 0 and sum(weights) == pytest.approx(1.0)
        assert entry["d_norm"] >= 0
    # the LoRA starts as the reference, where the KL term is at its minimum: its (numerically)
    # zero gradient is the min-norm point, so the first common descent direction is about 0
    assert log[0]["w_kl"] > 0.99 and log[0]["d_norm"] < 1e-6
    # normalised, that stationary KL term is left out and the first step moves
    out = unlearn("mollm", {"normalize": "true"}, str(tiny_target), "tofu:forget01", "tofu:retain90[:20]",
                  tmp_path / "mollm-normalised", TrainConfig(max_steps=1, batch_size=4, lr=1e-2, precision="fp32"),
                  Trainable(rank=8, lora_alpha=8))
    first = json.loads((out / "training_log.json").read_text())[0]
    assert first["w_kl"] == 0 and first["d_norm"] > 0.1
