"""`uld eval tofu` saves each finished split, so an interrupted evaluation resumes where it stopped."""
import json

import pytest

from uld_serve.eval.tofu_eval import PARTIAL, evaluate_tofu
from uld_serve.reference import UldModel

SMALL = {"split": "forget01", "forget_set": "f1", "limit": 3, "max_new_tokens": 4}


class Interrupted(Exception):
    pass


class CountingGenerator:
    """The reference model's greedy answers, counting calls; raises at call `fail_at` (an interruption)."""

    def __init__(self, model, fail_at=None):
        self.model, self.tokenizer, self.fail_at, self.calls = model, model.tokenizer, fail_at, 0

    def generate(self, requests, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise Interrupted()
        return self.model.generate(requests, **kwargs)


@pytest.fixture(scope="module")
def model(tiny_target, forget_sets):
    return UldModel(tiny_target, {"f1": forget_sets["f1"]})


def test_an_interrupted_evaluation_resumes_and_equals_an_uninterrupted_one(model, tmp_path):
    evaluate_tofu(model, tmp_path / "whole", generator=CountingGenerator(model), **SMALL)
    out = tmp_path / "resumed"
    with pytest.raises(Interrupted):  # stopped while generating the second split's answers
        evaluate_tofu(model, out, generator=CountingGenerator(model, fail_at=2), **SMALL)
    assert (out / PARTIAL).exists() and not (out / "TOFU_EVAL.json").exists()
    generator = CountingGenerator(model)
    evaluate_tofu(model, out, generator=generator, **SMALL)
    assert generator.calls == 3  # forget was not redone: retain, real authors, world facts
    assert not (out / PARTIAL).exists()
    whole, resumed = (json.loads((d / "TOFU_EVAL.json").read_text()) for d in (tmp_path / "whole", out))
    assert resumed == whole


def test_a_partial_evaluation_with_other_settings_is_not_resumed(model, tmp_path):
    with pytest.raises(Interrupted):
        evaluate_tofu(model, tmp_path, generator=CountingGenerator(model, fail_at=2), **SMALL)
    generator = CountingGenerator(model)
    evaluate_tofu(model, tmp_path, generator=generator, alpha=0.5, **SMALL)
    assert generator.calls == 4  # another alpha: every split evaluated anew
