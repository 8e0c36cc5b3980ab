"""`uld unlearn`: fit a weight-level unlearning method on the target and write its artifact.

The trainable part is a LoRA on every linear layer of the target (default; served like a
forget set) or all weights (`full`; the artifact is then a whole checkpoint to serve as a
target). The original model that reference-based losses compare with is the target with
the LoRA switched off, or a frozen copy when all weights train.
"""
import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from uld_serve.core.assistant import LORA_TARGET_MODULES
from uld_serve.core.errors import UldError
from uld_serve.core.models import fingerprint, load_model, load_tokenizer, resolve_model
from uld_serve.core.tofu import load_qa

from ..artifact import (data_record, epoch_rng, load_trainable_state, result_record, resume_dir, steps_per_epoch,
                        trainable_state, write_output)
from ..batching import encode_pairs, paired_batches
from ..loop import CHECKPOINTING, TrainConfig, accelerator_for, run_training
from ..sharding import checkpoint_fns, gathered, shard
from .base import Method, Step, get_method


@dataclass
class Trainable:
    full: bool = False  # False: a LoRA on every linear layer of the target
    rank: int = 32
    lora_alpha: int = 32


def default_lr(lr: Optional[float], full: bool) -> float:
    """The learning rate when none is given: 1e-5 for all weights, 1e-4 for a LoRA."""
    return lr if lr is not None else (1e-5 if full else 1e-4)


def check_fsdp(method, trainable: Trainable) -> None:
    """FSDP shards all weights and reduces the gradients of one plain backward pass."""
    if not trainable.full:
        raise UldError("--fsdp shards all weights: use it with --full (a LoRA job runs data-parallel without it)")
    if type(method).backward is not Method.backward or type(method).make_optimizer is not Method.make_optimizer:
        raise UldError(f"--fsdp supports methods with one plain gradient step; {method.name} combines gradients itself")


def prepare(target: str, method, trainable: Trainable, seed: int, device="cpu", gradient_checkpointing: bool = False,
            fsdp: Optional[bool] = None):
    """(model to train, its trainable parameters, reference() context manager, target dir).
    `fsdp`: None, or whether bf16 parameters are gathered, to shard both models over the processes."""
    target_dir = resolve_model(target)
    model = load_model(target_dir, device=device)
    torch.manual_seed(seed)
    reference_model = None
    if trainable.full:
        reference_model = copy.deepcopy(model).requires_grad_(False) if method.needs_reference else None
        reference = lambda: contextlib.nullcontext(reference_model)  # noqa: E731
    else:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=trainable.rank, lora_alpha=trainable.lora_alpha, lora_dropout=0.0,
                          target_modules=LORA_TARGET_MODULES)
        model = get_peft_model(model, lora)

        @contextlib.contextmanager
        def reference():
            with model.disable_adapter():
                yield model
    model.train()
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING)
    if fsdp is not None:
        for net in (model, reference_model):
            if net is not None:
                shard(net, torch.device(device), bf16=fsdp)
    return model, [p for p in model.parameters() if p.requires_grad], reference, target_dir


def make_batches(tokenizer, forget: str, retain: str, batch_size: int, seed: int):
    forget_pairs, retain_pairs = load_qa(forget), load_qa(retain)
    forget_enc, retain_enc = encode_pairs(tokenizer, forget_pairs), encode_pairs(tokenizer, retain_pairs)

    def epoch_batches(epoch):
        return paired_batches(forget_enc, retain_enc, batch_size, epoch_rng(seed, epoch), tokenizer.pad_token_id)

    return forget_pairs, retain_pairs, epoch_batches, steps_per_epoch(len(forget_enc), batch_size)


def unlearn(method_name: str, params: dict, target: str, forget: str, retain: str, out: Path,
            config: TrainConfig, trainable: Trainable, on_step=None) -> Path:
    """Train, then write the artifact atomically. `on_step(step_index, model, method, reference)`
    runs before each update (G-effect probes)."""
    method = get_method(method_name, params)
    if config.fsdp:
        check_fsdp(method, trainable)
    accelerator = accelerator_for(config)
    out = Path(out)
    model, trainable_params, reference, target_dir = prepare(
        target, method, trainable, config.seed, accelerator.device, config.gradient_checkpointing,
        fsdp=(accelerator.mixed_precision == "bf16") if config.fsdp else None)
    tokenizer = load_tokenizer(target_dir)
    forget_pairs, retain_pairs, epoch_batches, epoch_steps = make_batches(
        tokenizer, forget, retain, config.batch_size, config.seed)
    current = {}
    reference = reference if method.needs_reference else None

    def loss_fn(batch):
        current["step"] = Step(model, batch[0], batch[1], reference)
        terms = method.terms(current["step"])
        return terms, {k: float(v.detach()) for k, v in terms.items()}

    def backward(terms, step_index):
        if on_step is not None:
            on_step(step_index, model, method, reference)
        return method.backward(terms, trainable_params, step_index, current.pop("step"))

    state_fn, load_state_fn = checkpoint_fns(model, lambda: trainable_state(model),
                                             lambda state: load_trainable_state(model, state))
    summary = run_training(
        accelerator,
        params=trainable_params, steps_per_epoch=epoch_steps, epoch_batches=epoch_batches,
        loss_fn=loss_fn, config=config, resume_dir=resume_dir(out),
        state_fn=state_fn, load_state_fn=load_state_fn,
        desc=f"unlearn {method_name} {forget}",
        make_optimizer=lambda ps: method.make_optimizer(ps, config.lr, config.weight_decay),
        backward=backward,
        sharded_model=model if config.fsdp else None,
    )
    model.eval()
    manifest = {
        "kind": "weight-level",
        "method": method_name,
        "method_params": method.params,
        "weights": "full" if trainable.full else "lora",
        "base_model": str(target_dir),
        "base_fingerprint": fingerprint(target_dir),
        "alpha": 0.0,
        "forget": data_record(forget, forget_pairs),
        "retain": data_record(retain, retain_pairs),
        "training": {**config.as_dict(), **({} if trainable.full else {"rank": trainable.rank, "lora_alpha": trainable.lora_alpha,
                                                                      "lora_target_modules": LORA_TARGET_MODULES})},
        "seed": config.seed,
        "result": result_record(summary, trainable_params),
        "evaluation": None,
    }

    weights = gathered(model)  # every process takes part in gathering a sharded model

    def save(directory):
        model.save_pretrained(directory, state_dict=weights)
        if trainable.full:  # a whole checkpoint, served as a target
            tokenizer.save_pretrained(directory)

    return write_output(accelerator, out, save, summary["history"], manifest)
