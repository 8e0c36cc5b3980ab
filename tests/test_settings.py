"""core/settings.py: the one owner of alpha and r (defaults, ranges, checks, resolution
against a forget set, and the keys that carry them into vLLM)."""
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from uld_serve.core.artifact import ForgetSet
from uld_serve.core.errors import UldError
from uld_serve.core.artifact import read_manifest, write_manifest
from uld_serve.core.settings import (EngineOverrides, Settings, check_alpha, check_output_penalty, check_relative_top,
                                     check_repetition_penalty, read_extra_args, read_overrides, resolve)

ULD = ForgetSet("f", Path("f"), {"kind": "uld-assistant", "alpha": 1.5, "relative_top": 0.02, "num_layers": 2})
BARE = ForgetSet("bare", Path("bare"), {"kind": "uld-assistant", "num_layers": 2})  # a manifest without defaults
WEIGHT_LEVEL = ForgetSet("ga", Path("ga"), {"kind": "weight-level", "alpha": 0.0})


def test_requests_fill_in_from_the_manifest_then_the_papers_defaults():
    assert resolve(ULD) == Settings("f", 1.5, 0.02)
    assert resolve(ULD, alpha=0.5, relative_top=0.1) == Settings("f", 0.5, 0.1)
    assert resolve(BARE) == Settings("bare", 0.75, 0.01)
    assert resolve(None) == Settings(None, 0.0, 0.01)
    assert resolve(None, alpha=2.0, relative_top=0.5) == Settings(None, 0.0, 0.5)  # no forget set: the target alone
    assert resolve(WEIGHT_LEVEL, alpha=2.0) == Settings("ga", 0.0, 0.01)  # weight-level: served with alpha 0


def test_a_forget_sets_repetition_penalty_is_its_served_default_and_a_request_overrides_it():
    fluent = ForgetSet("fluent", Path("fluent"), {"kind": "uld-assistant", "num_layers": 2, "repetition_penalty": 1.1})
    assert resolve(fluent) == Settings("fluent", 0.75, 0.01, 1.1)
    assert resolve(fluent, repetition_penalty=1.0) == Settings("fluent", 0.75, 0.01, 1.0)  # the request's own value wins
    assert resolve(ULD).repetition_penalty is None  # neither names one: the backend's default
    assert resolve(None, repetition_penalty=1.2) == Settings(None, 0.0, 0.01, 1.2)
    assert resolve(fluent).as_dict()["repetition_penalty"] == 1.1


def test_a_forget_sets_frequency_penalty_is_its_served_default_and_a_request_overrides_it():
    fluent = ForgetSet("fluent", Path("fluent"), {"kind": "uld-assistant", "num_layers": 2, "frequency_penalty": 0.6})
    assert resolve(fluent) == Settings("fluent", 0.75, 0.01, None, 0.6)
    assert resolve(fluent, frequency_penalty=0) == Settings("fluent", 0.75, 0.01, None, 0.0)  # the request's own value wins
    assert resolve(ULD).frequency_penalty is None
    assert resolve(None, frequency_penalty=-1) == Settings(None, 0.0, 0.01, None, -1.0)


PENALTIES = {"repetition_penalty": (check_repetition_penalty, "a number above 0"),
             "frequency_penalty": (check_output_penalty, "a number in [-2, 2]")}


@pytest.mark.parametrize("key,value", [*(("repetition_penalty", v) for v in (0, -1.0, float("inf"), float("nan"), True, "1.1")),
                                       *(("frequency_penalty", v) for v in (2.01, -2.5, float("inf"), float("nan"), True, "0.6"))])
def test_a_penalty_out_of_range_is_refused(key, value, tmp_path):
    check, rule = PENALTIES[key]
    message = re.escape(f"{key} must be {rule}")
    with pytest.raises(UldError, match=message):
        check(value)
    with pytest.raises(UldError, match=message):
        resolve(ULD, **{key: value})
    (tmp_path / "adapter_config.json").write_text("{}")
    write_manifest(tmp_path, {"kind": "uld-assistant", "num_layers": 2, key: value})
    with pytest.raises(UldError, match="uld.json: " + message):  # at load, not per request
        read_manifest(tmp_path)


@pytest.mark.parametrize("value", [-0.1, 5.01, True, "1", float("nan")])
def test_alpha_out_of_range_is_refused(value):
    with pytest.raises(UldError, match=r"alpha must be a number in \[0.0, 5.0\]"):
        check_alpha(value)
    with pytest.raises(UldError, match="alpha must be"):
        resolve(None, alpha=value)  # refused even where it would not apply


@pytest.mark.parametrize("value", [0, -1, 1.5, False, "0.1", float("nan")])
def test_relative_top_out_of_range_is_refused(value):
    with pytest.raises(UldError, match=r"relative_top must be a number in \(0, 1\]"):
        check_relative_top(value)


def test_an_engines_narrower_range_refuses_rather_than_clamps():
    assert resolve(ULD, relative_top=0.015, relative_top_range=(0.01, 0.02)).relative_top == 0.015
    with pytest.raises(UldError, match="outside this engine's range"):
        resolve(ULD, relative_top=0.05, relative_top_range=(0.01, 0.02))
    with pytest.raises(UldError, match="outside this engine's range"):
        resolve(ULD, relative_top_range=(0.005, 0.01))  # the manifest's own 0.02 is outside too


def test_engine_overrides_round_trip_through_the_model_config():
    overrides = EngineOverrides(assistant_layers=3, relative_top_range=(0.01, 0.05), sparse_head=True, compile_target=True,
                                stacked=False)
    assert read_overrides(SimpleNamespace(**overrides.as_hf_overrides())) == overrides
    assert read_overrides(SimpleNamespace()).assistant_layers == 0  # not a uld-serve config: the model refuses it


def test_extra_args_carry_the_resolved_settings_and_are_checked_again():
    applied = resolve(ULD, alpha=0.25)
    assert read_extra_args(applied.extra_args()) == (0.25, 0.02)
    assert read_extra_args(None) == (0.0, 0.01)  # a request without ULD settings: the target's logits
    with pytest.raises(UldError, match="alpha must be"):
        read_extra_args({"uld_alpha": 9})
