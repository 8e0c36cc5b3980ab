import os
import tempfile

os.environ.setdefault("ULD_HOME", tempfile.mkdtemp(prefix="uld-test-home-"))
# vLLM engines start without warm-up compilation (46 s instead of 71-115 s here); the
# engine fixture of test_engine.py opts out, so the default compiled path stays tested.
os.environ.setdefault("ULD_ENFORCE_EAGER", "1")
# vLLM runs its engine core and worker inside the process that builds the engine instead of
# spawning two processes that each import vLLM again (about 25 s per engine start here): the CLI
# jobs the tests start, and the server's engine process (vLLM's async engine always has one).
# Engines built in this test process keep vLLM's default processes (helpers.SEPARATE_PROCESSES),
# which keeps that path covered and vLLM's thread and environment settings out of this process.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# ULD_TEST_DEVICE=cuda runs the training, evaluation and reference-decoding tests on a GPU
# (benchmarks/gpu_session.sh); otherwise the GPU is hidden, so that every `auto` is the CPU.
if os.environ.setdefault("ULD_TEST_DEVICE", "cpu") == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402

from helpers import amplify_lora  # noqa: E402


@pytest.fixture(scope="session")
def tiny_base():
    from uld_serve.core.models import setup_model

    return setup_model("tiny-random")


@pytest.fixture(scope="session")
def tiny_target(tiny_base, tmp_path_factory):
    """tiny-random fine-tuned a few steps on forget01: a target with its own fingerprint."""
    from uld_training.finetune import finetune
    from uld_training.loop import TrainConfig

    out = tmp_path_factory.mktemp("target") / "model"
    return finetune(str(tiny_base), "tofu:forget01", out, TrainConfig(max_steps=2, batch_size=4, precision="fp32"))


@pytest.fixture(scope="session")
def forget_sets(tiny_target, tmp_path_factory):
    """Two ULD forget sets for the tiny target (forget01 and a slice of forget05, whose manifest
    names a served alpha of 1.5 and a repetition penalty of 0.5: below 1 it favours tokens
    already seen, which changes these tiny models' answers; above 1 it would not, since they
    never repeat a token in a few steps)."""
    from uld_training.assistant import AssistantConfig, train_assistant
    from uld_training.loop import TrainConfig

    root = tmp_path_factory.mktemp("forget_sets")
    config = TrainConfig(max_steps=3, batch_size=4, lr=5e-3, precision="fp32")
    sets = {
        "f1": train_assistant(str(tiny_target), "tofu:forget01", "tofu:retain90[:40]", root / "f1", config, AssistantConfig(num_layers=2)),
        "f2": train_assistant(str(tiny_target), "tofu:forget05[:40]", "tofu:retain90[40:80]", root / "f2", config,
                              AssistantConfig(num_layers=2, alpha=1.5, repetition_penalty=0.5)),
    }
    for path in sets.values():
        amplify_lora(path, 50.0)
    return sets


@pytest.fixture(scope="session")
def weight_level_set(tiny_target, tmp_path_factory):
    """A weight-level forget set (gradient ascent, LoRA on the target) for the tiny target."""
    from uld_training.loop import TrainConfig
    from uld_training.unlearn.run import Trainable, unlearn

    out = tmp_path_factory.mktemp("weight_level") / "ga"
    unlearn("ga", {}, str(tiny_target), "tofu:forget01", "tofu:retain90[:40]", out,
            TrainConfig(max_steps=2, batch_size=4, lr=5e-3, precision="fp32"), Trainable(rank=8, lora_alpha=8))
    amplify_lora(out, 50.0)
    return out
