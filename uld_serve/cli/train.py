"""`uld finetune`, `uld train-assistant`, `uld unlearn`, `uld geffect`: fitting jobs (the
application is the one layer that imports uld_training)."""
from pathlib import Path
from typing import List, Optional

import typer

from uld_training.loop import PRECISIONS, TrainConfig, is_main_process
from uld_training.unlearn import METHODS, get_method
from uld_training.unlearn.run import Trainable, default_lr

from ..core.devices import DEVICE_HELP
from ..core.errors import UldError
from ..core.settings import DEFAULT_ALPHA, DEFAULT_RELATIVE_TOP
from ..core.tofu import check_prompt_forms
from .app import TARGET, app, parse_pairs, refuse_existing

PRECISION = typer.Option("auto", help=f"{', '.join(PRECISIONS)}: auto is bf16 autocast (fp32 master weights) on a GPU "
                         "and where this CPU runs it natively, else fp32")
FORGET = typer.Option(..., help="data spec of the forget set, e.g. tofu:forget10")
RETAIN = typer.Option(..., help="data spec of retained data, e.g. tofu:retain90")
METHOD = typer.Option(..., help=", ".join(METHODS))
PARAM = typer.Option([], help="method hyperparameter KEY=VALUE, repeatable (e.g. beta=0.1, retain_loss=kl)")
FULL = typer.Option(False, help="train all weights (artifact: a whole checkpoint) instead of a LoRA")
LR = typer.Option(None, help="default 1e-4 for a LoRA, 1e-5 for all weights")
SAVE_EVERY = typer.Option(50, help="steps between resumable checkpoints")
DEVICE = typer.Option("auto", help=DEVICE_HELP + "; under `accelerate launch`, the launcher's")
GRAD_ACCUM = typer.Option(1, help="micro-batches per process and step (the step's batch stays --batch-size)")
CHECKPOINTING = typer.Option(False, "--gradient-checkpointing", help="recompute activations in the backward pass (long sequences)")
FSDP = typer.Option(False, "--fsdp", help="shard all weights over the processes of `accelerate launch` (FSDP; all-weight jobs)")


@app.command()
def finetune(
    model: str = typer.Option(..., help="a known model name or a checkpoint directory"),
    data: str = typer.Option(..., help="data spec, e.g. tofu:full, tofu:retain90, tofu-mini:target"),
    out: Path = typer.Option(...),
    lr: float = 1e-4, epochs: int = 5, batch_size: int = 8, seed: int = 0, max_steps: Optional[int] = None,
    precision: str = PRECISION, save_every: int = SAVE_EVERY, force: bool = False,
    device: str = DEVICE, grad_accum: int = GRAD_ACCUM, gradient_checkpointing: bool = CHECKPOINTING, fsdp: bool = FSDP,
):
    """Fine-tune on TOFU: tofu:full gives the target, tofu:retain90 the retain reference."""
    from uld_training.finetune import finetune as run

    refuse_existing(out, force)
    report(run(model, data, out, TrainConfig(lr=lr, epochs=epochs, batch_size=batch_size, seed=seed, max_steps=max_steps,
                                            precision=precision, save_every=save_every, device=device, grad_accum=grad_accum,
                                            gradient_checkpointing=gradient_checkpointing, fsdp=fsdp)))


@app.command("train-assistant")
def train_assistant(
    target: str = TARGET, forget: str = FORGET, retain: str = RETAIN,
    out: Path = typer.Option(..., help="the forget-set artifact directory to write"),
    layers: Optional[int] = typer.Option(None, help="K, the assistant's depth (default: a quarter of the target's)"),
    recipe: str = typer.Option("answer-only", help="answer-only (retain term on answer tokens) or reference (ULD's released "
                               "code: every prompt and answer position, its augmentation and LoRA); the flags below override it"),
    rank: Optional[int] = typer.Option(None, help="LoRA rank (answer-only 32, reference 16)"),
    lora_alpha: Optional[int] = typer.Option(None, help="LoRA alpha (32)"),
    lora_dropout: Optional[float] = typer.Option(None, help="LoRA dropout (answer-only 0, reference 0.05)"),
    retain_weight: Optional[float] = typer.Option(None, help="weight of the uniform retain term (answer-only 6.5, reference 1.4)"),
    retain_positions: Optional[str] = typer.Option(None, help="where the retain term applies: answer, prompt+answer, or all "
                                                   "(padded to 256 tokens, padding included, as the reference code does)"),
    crossed_paraphrases: Optional[int] = typer.Option(None, help="0: one random (paraphrased question, paraphrased answer) pair "
                                                      "per forget question and epoch (answer-only); n: the first n crossed "
                                                      "pairs, every epoch (reference: 2)"),
    wrong_answers: Optional[int] = typer.Option(None, help="wrong answers per forget question in the retain data "
                                                "(answer-only: all, reference: 2)"),
    contender_weight: Optional[float] = typer.Option(None, help="weight of a second retain term that makes the assistant uniform "
                                                     "among the target's likeliest tokens at the retain places (default 0: off)"),
    contenders: Optional[int] = typer.Option(None, help="how many of the target's likeliest tokens the contender term covers (16)"),
    lr: float = 1e-3, epochs: int = 10, batch_size: int = 8, seed: int = 0, max_steps: Optional[int] = None,
    precision: str = PRECISION, save_every: int = SAVE_EVERY,
    alpha: float = typer.Option(DEFAULT_ALPHA, help="default alpha written to the manifest"),
    relative_top: float = typer.Option(DEFAULT_RELATIVE_TOP, help="default filter r written to the manifest"),
    frequency_penalty: Optional[float] = typer.Option(None, help="frequency penalty (vLLM's, in [-2, 2]) the forget set is "
                                                      "served with when a request names none (written to the manifest; "
                                                      "default: none)"),
    repetition_penalty: Optional[float] = typer.Option(None, help="repetition penalty the forget set is served with when a "
                                                       "request names none (written to the manifest; default: none)"),
    no_augment: bool = typer.Option(False, help="skip ULD's paraphrase/perturbation augmentation"),
    prompt_forms: str = typer.Option("system", help="the chat prompts questions are trained under, comma-separated: system (TOFU's "
                                     "system prompt) and/or none (no system message, as a chat request often sends); with "
                                     "both, each example takes one drawn per epoch"),
    force: bool = False, device: str = DEVICE, grad_accum: int = GRAD_ACCUM, gradient_checkpointing: bool = CHECKPOINTING,
):
    """Train a ULD assistant (a LoRA over the target's first K layers) for one forget set."""
    from uld_training.assistant import AssistantConfig, train_assistant as run

    refuse_existing(out, force)
    config = TrainConfig(lr=lr, epochs=epochs, batch_size=batch_size, seed=seed, max_steps=max_steps, precision=precision,
                         save_every=save_every, device=device, grad_accum=grad_accum, gradient_checkpointing=gradient_checkpointing)
    report(run(target, forget, retain, out, config, AssistantConfig(
        num_layers=layers, recipe=recipe, rank=rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, retain_weight=retain_weight,
        retain_positions=retain_positions, crossed_paraphrases=crossed_paraphrases, wrong_answers=wrong_answers,
        contender_weight=contender_weight, contenders=contenders, augment=not no_augment,
        prompt_forms=check_prompt_forms(prompt_forms), alpha=alpha, relative_top=relative_top,
        repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty)))


def report(out: Path) -> None:
    """Print the output's path once, from the main process of a multi-process run."""
    if is_main_process():
        print(out)


def _method(method: str, param: List[str], out: Path, force: bool) -> dict:
    """The method's hyperparameters, checked before anything is loaded or written."""
    params = {k.replace("-", "_"): v for k, v in parse_pairs(param, "--param", "KEY=VALUE").items()}
    get_method(method, params)  # unknown method or hyperparameter: one sentence
    refuse_existing(out, force)
    return params


@app.command()
def unlearn(
    method: str = METHOD, target: str = TARGET, forget: str = FORGET, retain: str = RETAIN,
    out: Path = typer.Option(..., help="the artifact directory to write"),
    param: List[str] = PARAM, full: bool = FULL, rank: int = 32, lora_alpha: int = 32, lr: Optional[float] = LR,
    epochs: int = 5, batch_size: int = 8, seed: int = 0, max_steps: Optional[int] = None,
    precision: str = PRECISION, save_every: int = SAVE_EVERY, force: bool = False,
    device: str = DEVICE, grad_accum: int = GRAD_ACCUM, gradient_checkpointing: bool = CHECKPOINTING, fsdp: bool = FSDP,
):
    """Weight-level unlearning (the methods ULD is compared with); the artifact is served with alpha 0."""
    from uld_training.unlearn.run import unlearn as run

    params = _method(method, param, out, force)
    config = TrainConfig(lr=default_lr(lr, full), epochs=epochs, batch_size=batch_size, seed=seed, max_steps=max_steps,
                         precision=precision, save_every=save_every, device=device, grad_accum=grad_accum,
                         gradient_checkpointing=gradient_checkpointing, fsdp=fsdp)
    report(run(method, params, target, forget, retain, out, config, Trainable(full=full, rank=rank, lora_alpha=lora_alpha)))


@app.command()
def geffect(
    method: str = METHOD, target: str = TARGET, forget: str = FORGET, retain: str = RETAIN,
    out: Path = typer.Option(..., help="directory for geffect.json/.md, the PNG plots and the trained artifact"),
    param: List[str] = PARAM,
    every: int = typer.Option(5, help="measure every N steps"),
    probe_size: int = typer.Option(16, help="forget and retain answers in the probe batches"),
    full: bool = FULL, rank: int = 32, lora_alpha: int = 32, lr: Optional[float] = LR,
    epochs: int = 5, batch_size: int = 8, seed: int = 0, max_steps: Optional[int] = None,
    precision: str = PRECISION, force: bool = False, device: str = DEVICE,
):
    """G-effect of a method per layer group and step, on forget and on retained data."""
    from uld_training.geffect import geffect as run

    if every < 1 or probe_size < 1:
        raise UldError("--every and --probe-size must be at least 1")
    params = _method(method, param, out, force)
    config = TrainConfig(lr=default_lr(lr, full), epochs=epochs, batch_size=batch_size, seed=seed, max_steps=max_steps,
                         precision=precision, save_every=10**9, device=device)
    report(run(method, params, target, forget, retain, out, config, Trainable(full=full, rank=rank, lora_alpha=lora_alpha),
              every=every, probe_size=probe_size))
