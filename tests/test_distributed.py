"""Data-parallel training on the CPU: two processes under torchrun (gloo), as `accelerate
launch --multi_gpu` starts them on GPUs. A step's global batch is split by rows, so two
processes compute what one process computes with --grad-accum 2, and both stay close to one
process on the whole batch (each micro-batch averages over its own answer tokens). With
--fsdp (all-weight jobs) the weights are sharded over the processes as well."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from uld_serve.core.requests import GenerationRequest
from uld_serve.core.tofu import chat_prompt_ids
from uld_serve.reference import UldModel

from helpers import assert_user_error, run, uld

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
    # micro-batch means against the batch's token mean: close, not equal (NPO's step-2 losses were
    # 0.104% apart on an Intel AMX machine, under 0.1% on the AMD ones)
    assert two == pytest.approx(whole, rel=3e-3)
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


FULL_NPO = ["unlearn", "--method", "npo", "--full", "--forget", "tofu:forget01", "--retain", "tofu:retain90[:40]"]
LONG = ["--max-steps", "12", "--save-every", "2", "--batch-size", "4", "--precision", "fp32", "--lr", "1e-4", "--device", "cpu"]


def _killed_after_first_checkpoint(command, env, out: Path):
    """Start a job and SIGKILL all its processes once its first checkpoint is complete (torchrun
    starts its workers in sessions of their own, so the whole process tree is killed)."""
    job = subprocess.Popen([str(a) for a in command], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out.parent / f".{out.name}.resume" / "state" / "run.json"
    deadline = time.time() + 240
    while not marker.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    tree = [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]
    for process in tree:
        process.kill()
    job.wait()
    psutil.wait_procs(tree, timeout=30)
    assert marker.exists() and not out.exists(), "the job ended before it could be interrupted"


def test_fsdp_sharded_unlearning_resumes_and_matches_one_process(tiny_target, tmp_path):
    """NPO on all weights with the target and its frozen reference both sharded over two
    processes: killed after a checkpoint and rerun, it ends where one process with the same
    micro-batches ends, and its output loads as a whole checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    two, one = tmp_path / "two", tmp_path / "one"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "uld_serve.cli",
               *FULL_NPO, "--target", tiny_target, "--out", two, *LONG, "--fsdp"]
    _killed_after_first_checkpoint(command, env, two)
    resumed = subprocess.run([str(a) for a in command], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0 and "resuming at step" in resumed.stderr, resumed.stderr[-3000:]
    run(sys.executable, "-m", "uld_serve.cli", *FULL_NPO, "--target", tiny_target, "--out", one, *LONG, "--grad-accum", "2", env=env)
    losses = [[row["loss"] for row in json.loads((out / "training_log.json").read_text())] for out in (two, one)]
    assert len(losses[0]) == 12 and losses[0] == pytest.approx(losses[1], rel=1e-4)
    sharded, plain = load_file(two / "model.safetensors"), load_file(one / "model.safetensors")
    assert sorted(sharded) == sorted(plain)  # the tied LM head written once, as save_pretrained does
    assert all(torch.allclose(sharded[k], plain[k], atol=1e-4) for k in plain)
    assert json.loads((two / "uld.json").read_text())["result"]["processes"] == 2
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


@pytest.mark.parametrize("extra, env, fragment", [
    ((), {}, "--fsdp shards all weights: use it with --full"),
    (("--full", "--method", "mollm"), {}, "mollm combines gradients itself"),
    (("--full",), {}, "start the job with `accelerate launch` or torchrun"),
    (("--full",), {"ACCELERATE_USE_FSDP": "true"}, "without accelerate's --use_fsdp"),
])
def test_fsdp_refusals(tiny_target, tmp_path, monkeypatch, extra, env, fragment):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = ["unlearn", "--method", "npo", "--forget", "tofu:forget01", "--retain", "tofu:retain90", *extra]
    assert_user_error(uld(*args, "--target", tiny_target, "--out", tmp_path / "x", "--fsdp", check=False), fragment)
