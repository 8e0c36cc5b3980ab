"""Data-parallel training on the CPU: two processes under torchrun (gloo), as `accelerate
launch --multi_gpu` starts them on GPUs. A step's global batch is split by rows, so two
processes compute what one process computes with --grad-accum 2, and both stay close to one
process on the whole batch (each micro-batch averages over its own answer tokens)."""
import json
import os
import sys
from pathlib import Path

import pytest

from uld_serve.core.requests import GenerationRequest
from uld_serve.core.tofu import chat_prompt_ids
from uld_serve.reference import UldModel

from helpers import run

ASSISTANT = ["train-assistant", "--forget", "tofu:forget01", "--retain", "tofu:retain90[:40]", "--layers", "2"]
NPO = ["unlearn", "--method", "npo", "--forget", "tofu:forget01", "--retain", "tofu:retain90[:40]", "--rank", "8", "--lora-alpha", "8"]
STEPS = ["--max-steps", "3", "--batch-size", "4", "--precision", "fp32", "--lr", "5e-3", "--device", "cpu"]


def train(target, job, out, processes=1, extra=()):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)] if processes > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}  # gloo on the CPU, on any machine
    run(*launcher, "-m", "uld_serve.cli", *job, "--target", target, "--out", out, *STEPS, *extra, env=env)
    return [row["loss"] for row in json.loads((Path(out) / "training_log.json").read_text())]


@pytest.mark.parametrize("job", [ASSISTANT, NPO], ids=["assistant", "npo"])
def test_two_processes_equal_one_with_accumulation(job, tiny_target, tmp_path):
    two = train(tiny_target, job, tmp_path / "two", processes=2)
    accumulated = train(tiny_target, job, tmp_path / "accumulated", extra=("--grad-accum", "2"))
    whole = train(tiny_target, job, tmp_path / "whole")
    assert two == pytest.approx(accumulated, rel=1e-5)  # the same arithmetic, reduced in another order
    assert two == pytest.approx(whole, rel=1e-3)  # micro-batch means against the batch's token mean
    manifest = json.loads((tmp_path / "two" / "uld.json").read_text())
    assert manifest["result"]["processes"] == 2 and manifest["training"]["grad_accum"] == 1
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no resume directory left behind


def test_a_two_process_forget_set_serves_as_one_trained_alone(tiny_target, tmp_path):
    train(tiny_target, ASSISTANT, tmp_path / "two", processes=2)
    train(tiny_target, ASSISTANT, tmp_path / "accumulated", extra=("--grad-accum", "2"))
    model = UldModel(tiny_target, {"two": tmp_path / "two", "accumulated": tmp_path / "accumulated"}, device="cpu")
    prompt = chat_prompt_ids(model.tokenizer, "Who is Basil Mahfouz Al-Kuwaiti?")
    out = model.generate([GenerationRequest(prompt, name, alpha=1.0, max_new_tokens=12) for name in ("two", "accumulated")])
    assert out[0] == out[1]
