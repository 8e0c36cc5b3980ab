import json
import re

import pytest
import torch
from safetensors.torch import load_file

from uld_serve.core.assistant import build_assistant, default_num_layers
from uld_serve.core.errors import UldError
from uld_serve.core.models import load_model


def test_default_depth_is_a_quarter():
    assert default_num_layers(32) == 8
    assert default_num_layers(30) == 8
    assert default_num_layers(4) == 1


def test_assistant_shares_the_targets_tensors(tiny_base):
    target = load_model(tiny_base)
    assistant = build_assistant(target, 2).assistant
    assert assistant.config.num_hidden_layers == 2
    target_ptrs = {p.data_ptr() for p in target.parameters()}
    assert all(p.data_ptr() in target_ptrs for p in assistant.parameters())
    assert assistant.model.layers[1].mlp.up_proj.weight.data_ptr() == target.model.layers[1].mlp.up_proj.weight.data_ptr()
    assert assistant.model.layers[0] is not target.model.layers[0]  # separate modules: LoRA wraps only these


def test_assistant_is_the_targets_first_layers(tiny_base):
    target = load_model(tiny_base)
    assistant = build_assistant(target, 2)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    hidden = target(input_ids=ids, output_hidden_states=True).hidden_states[2]
    expected = target.lm_head(target.model.norm(hidden))
    assert torch.allclose(assistant(input_ids=ids).logits, expected, atol=1e-5)


def test_depth_beyond_the_target_is_refused(tiny_base):
    with pytest.raises(UldError, match="between 1 and the target's 4 layers"):
        build_assistant(load_model(tiny_base), 5)


def test_lora_touches_only_assistant_layers(forget_sets):
    artifact = forget_sets["f2"]
    manifest = json.loads((artifact / "uld.json").read_text())
    weights = load_file(artifact / "adapter_model.safetensors")
    assert all(name.startswith("base_model.model.assistant.model.layers.") for name in weights)
    layers = {int(name.split("layers.")[1].split(".")[0]) for name in weights}
    assert layers == set(range(manifest["num_layers"])) == {0, 1}
    assert all("lora_" in name for name in weights)
    assert any(t.abs().sum() > 0 for name, t in weights.items() if "lora_B" in name)  # it trained


def test_manifest_describes_the_forget_set(forget_sets, tiny_target):
    from uld_serve.core.models import fingerprint

    manifest = json.loads((forget_sets["f1"] / "uld.json").read_text())
    assert manifest["kind"] == "uld-assistant"
    assert manifest["base_fingerprint"] == fingerprint(tiny_target)
    assert manifest["num_layers"] == 2 and manifest["alpha"] == 0.75 and manifest["relative_top"] == 0.01
    assert manifest["forget"]["num_examples"] == 40 and manifest["retain"]["perturbed_augmentation"] == 120
    assert manifest["seed"] == 0 and manifest["training"]["rank"] == 32


def test_reference_recipe_trains_what_its_manifest_says(tiny_target, tmp_path):
    from uld_training.assistant import AssistantConfig, train_assistant
    from uld_training.loop import TrainConfig

    out = train_assistant(str(tiny_target), "tofu:forget01", "tofu:retain90[:8]", tmp_path / "ref",
                          TrainConfig(max_steps=1, batch_size=4, precision="fp32"),
                          AssistantConfig(num_layers=2, recipe="reference", retain_positions="all", contender_weight=2.0,
                                          wrong_answers=1, prompt_forms=("system", "none")))
    manifest = json.loads((out / "uld.json").read_text())
    training = manifest["training"]
    assert training["recipe"] == "reference" and training["retain_positions"] == "all"  # the flag overrides the recipe
    assert (training["contender_weight"], training["contenders"]) == (2.0, 16)
    assert training["prompt_forms"] == ["system", "none"]
    assert manifest["result"]["retain_contender_ce"] > 0  # the term was computed and logged
    assert (training["rank"], training["lora_dropout"], training["retain_weight"], training["crossed_paraphrases"]) == (16, 0.05, 1.4, 2)
    assert manifest["retain"]["perturbed_augmentation"] == 40 and training["wrong_answers"] == 1  # the flag overrides the recipe
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and adapter["lora_dropout"] == 0.05
    assert manifest["result"]["steps_per_epoch"] == (40 + 2 * 40) // 4  # each forget QA and its first two crossed paraphrases


def test_augmentation_flags_override_the_recipe():
    from uld_training.assistant import RECIPES, AssistantConfig

    recipe = AssistantConfig(crossed_paraphrases=2, wrong_answers=2).resolved()  # answer-only with the reference's augmentation
    assert (recipe.crossed_paraphrases, recipe.wrong_answers) == (2, 2)
    assert (recipe.rank, recipe.retain_positions) == (RECIPES["answer-only"].rank, RECIPES["answer-only"].retain_positions)


@pytest.mark.parametrize("change, message", [(dict(recipe="paper"), "unknown recipe 'paper'"),
                                             (dict(retain_positions="prompt"), "--retain-positions must be one of"),
                                             (dict(lora_dropout=1.0), "--lora-dropout must be in [0, 1)"),
                                             (dict(contender_weight=-1.0), "--contender-weight must not be negative"),
                                             (dict(crossed_paraphrases=-1), "--crossed-paraphrases must not be negative"),
                                             (dict(wrong_answers=0), "--wrong-answers must be at least 1"),
                                             (dict(contenders=1), "--contenders must be at least 2")])
def test_bad_recipe_settings_are_refused(change, message):
    from uld_training.assistant import AssistantConfig

    with pytest.raises(UldError, match=re.escape(message)):
        AssistantConfig(**change).resolved()
