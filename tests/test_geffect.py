"""`uld geffect`: the G-effect's sign convention and its outputs."""
import json

from uld_training.geffect import geffect
from uld_training.loop import TrainConfig
from uld_training.unlearn.run import Trainable

from helpers import assert_user_error, uld

CONFIG = dict(max_steps=3, batch_size=4, lr=1e-2, precision="fp32")


def run(tiny_target, tmp_path, method, params):
    out = geffect(method, params, str(tiny_target), "tofu:forget01", "tofu:retain90[:20]", tmp_path / method,
                  TrainConfig(**CONFIG), Trainable(rank=8, lora_alpha=8), every=2, probe_size=4)
    return out, json.loads((out / "geffect.json").read_text())["records"]


def test_gradient_ascent_unlearns_and_descent_retains(tiny_target, tmp_path):
    out, records = run(tiny_target, tmp_path, "ga", {})
    assert [r["step"] for r in records] == [0, 2]
    for r in records:  # GA's update on the probe itself is -grad R_forget: e = -|grad|^2 in every group
        assert r["forget_total"] < 0 and all(v <= 0 for v in r["forget"].values())
        assert set(r["forget"]) == {"layer 00", "layer 01", "layer 02", "layer 03"}  # a LoRA on the 4 layers
    for name in ("geffect.md", "geffect_total.png", "geffect_layers.png", "artifact/uld.json"):
        assert (out / name).exists()
    _, records = run(tiny_target, tmp_path, "graddiff", {"forget_weight": 0.0})
    for r in records:  # pure retain descent: e_retain = +|grad R_retain|^2
        assert r["retain_total"] > 0 and all(v >= 0 for v in r["retain"].values())


def test_bad_input(tiny_target, tmp_path):
    common = ["--target", tiny_target, "--forget", "tofu:forget01", "--retain", "tofu:retain90[:20]", "--out", tmp_path / "g"]
    assert_user_error(uld("geffect", "--method", "ga", *common, "--every", "0", check=False), "--every")
    assert_user_error(uld("geffect", "--method", "nope", *common, check=False), "unknown method")
    assert not (tmp_path / "g").exists()
