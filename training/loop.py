"""One training loop for every fitting job, on Hugging Face Accelerate: device placement,
bf16 autocast (fp32 master weights), gradient accumulation, data-parallel processes under
`accelerate launch`, resumable checkpoints through `save_state`/`load_state`, a progress bar
and the optimizer (AdamW with a linear warmup and decay unless a method brings its own).

A step consumes one global batch of `batch_size` examples (the data order is a function of
the seed and the epoch, so a resumed run sees exactly the batches it would have seen). The
batch is cut into `processes x grad_accum` micro-batches by rows; each process runs its own,
every micro-batch's loss weighted by its share of the rows, and the gradients are summed
across processes before the update. So one process with `--grad-accum 2` computes what two
processes compute, and both approximate the whole batch's loss (each micro-batch averages
over its own answer tokens). Gradients are reduced by hand rather than through a DDP wrapper
because the jobs call parts of the model directly (the LM head only where answers are)."""
import json
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm import tqdm

from uld_serve.core.devices import resolve_device
from uld_serve.core.errors import UldError

PRECISIONS = ("auto", "fp32", "bf16")
RUN_FILE = "run.json"  # the settings a resume directory belongs to
# --gradient-checkpointing: the non-reentrant form needs no input that requires grad, which a
# LoRA over frozen embeddings lacks
CHECKPOINTING = {"use_reentrant": False}


def bf16_is_fast() -> bool:
    """Whether oneDNN has a native bf16 path on this CPU (AVX-512 or AMX). Without one (AVX2-only
    machines) bf16 is emulated and far slower than fp32 (BENCHMARKS.md)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: Optional[torch.device] = None) -> str:
    """`auto` is bf16 autocast on a GPU and where this CPU runs it natively, fp32 elsewhere."""
    if precision != "auto":
        return precision
    if device is not None and device.type == "cuda":
        return "bf16"
    return "bf16" if bf16_is_fast() else "fp32"


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def peak_gpu_mib(device) -> Optional[float]:
    if torch.device(device).type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


@dataclass
class TrainConfig:
    lr: float = 1e-4
    epochs: int = 5
    batch_size: int = 8  # examples per optimizer step, over all processes and accumulation steps
    seed: int = 0
    max_steps: Optional[int] = None
    precision: str = "auto"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    save_every: int = 50
    grad_accum: int = 1
    device: str = "auto"
    gradient_checkpointing: bool = False
    fsdp: bool = False  # shard all weights over the launched processes (full-weight jobs)

    def validate(self):
        if self.precision not in PRECISIONS:
            raise UldError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("epochs", "batch_size", "save_every", "grad_accum"):
            if getattr(self, name) < 1:
                raise UldError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise UldError("--max-steps must be at least 1")
        if not self.lr > 0:
            raise UldError("--lr must be positive")
        if self.fsdp and not launched():
            raise UldError("--fsdp shards the weights over several processes: start the job with `accelerate launch` or torchrun")
        resolve_device(self.device)
        return self

    def as_dict(self):
        return asdict(self)

    def resume_key(self) -> dict:
        """What a resumed run must share with the run it continues (the device and the sharding
        may change: checkpoints hold full tensors)."""
        return {k: v for k, v in asdict(self).items() if k not in ("device", "fsdp")}


def launched() -> bool:
    """Whether this process is one of several started by `accelerate launch` (or torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def accelerator_for(config: TrainConfig):
    """The job's Accelerator: under `accelerate launch` the launcher's processes and devices,
    else one process on `config.device`."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        # Accelerate's own wrapping needs models passed through prepare(), which these jobs do not do
        raise UldError("start the job without accelerate's --use_fsdp and pass --fsdp to the uld command (all-weight jobs)")
    config.validate()
    if launched():
        cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
        device = torch.device("cpu" if cpu else "cuda")
    else:
        device = resolve_device(config.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # Accelerate keeps one state per process; a job may run after another with other
        # settings (tests, the demo), so a single-process job starts from a clean one.
        AcceleratorState._reset_state(reset_partial_state=True)
    precision = resolve_precision(config.precision, device)
    if precision == "bf16" and device.type == "cpu" and not bf16_is_fast():
        tqdm.write("warning: this CPU has no native bf16 path; bf16 autocast runs far slower than fp32 here (use --precision auto)")
    return Accelerator(cpu=device.type == "cpu", mixed_precision="bf16" if precision == "bf16" else "no")


def adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the fused update: one kernel over all parameters instead of a loop of small
    ops per tensor (same values to rounding; BENCHMARKS.md has the gain)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return type(batch)(to_device(b, device) for b in batch)


def _rows(batch) -> int:
    return next(iter(batch.values())).shape[0] if isinstance(batch, dict) else _rows(batch[0])


def _take(batch, rows: torch.Tensor):
    if isinstance(batch, dict):
        return {k: v[rows] for k, v in batch.items()}
    return type(batch)(_take(b, rows) for b in batch)


def micro_batches(batch, process: int, processes: int, grad_accum: int) -> list:
    """This process's micro-batches of a global batch, each with its share of the batch's rows."""
    if processes * grad_accum == 1:
        return [(batch, 1.0)]
    total = _rows(batch)
    parts = torch.arange(total).tensor_split(processes * grad_accum)
    mine = parts[process * grad_accum : (process + 1) * grad_accum]
    return [(_take(batch, rows), len(rows) / total) for rows in mine if len(rows)]


class _Progress:
    """What a checkpoint holds besides the optimizer and schedule: step, history, trainable state."""

    def __init__(self, state_fn, load_state_fn):
        self.state_fn, self.load_state_fn = state_fn, load_state_fn
        self.step, self.history = 0, []

    def state_dict(self):
        return {"step": self.step, "history": self.history, "model": self.state_fn()}

    def load_state_dict(self, state):
        self.step, self.history = state["step"], state["history"]
        self.load_state_fn(state["model"])


def run_training(
    accelerator,
    params: list,
    steps_per_epoch: int,
    epoch_batches: Callable[[int], list],
    loss_fn: Callable[[object], tuple],
    config: TrainConfig,
    resume_dir: Path,
    state_fn: Callable[[], dict],
    load_state_fn: Callable[[dict], None],
    desc: str,
    make_optimizer: Optional[Callable[[list], torch.optim.Optimizer]] = None,
    backward: Optional[Callable[[object, int], None]] = None,
    sharded_model=None,
) -> dict:
    """Train `params` (already on accelerator.device); `epoch_batches(e)` lists epoch e's global
    batches, `loss_fn(micro_batch)` returns (loss, {name: float}) with the objective's value under
    "loss". By default the optimizer is AdamW and `loss.backward()` fills the gradients;
    `make_optimizer(params)` and `backward(loss, step)` replace them (second-order and
    multi-objective methods); a dict it returns is logged with the step, and so is an optimizer's
    `step_log` dict after its step. `sharded_model` is the FSDP model `params` belong to (FSDP
    reduces the gradients itself and the optimizer state is gathered for checkpoints).
    Returns a summary (final logged values, steps, wall time)."""
    config.validate()
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    optimizer = adamw(params, config.lr, config.weight_decay) if make_optimizer is None else make_optimizer(params)
    warmup = max(1, int(config.warmup_ratio * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    progress = _Progress(state_fn, load_state_fn)
    if sharded_model is not None:
        from .sharding import FullOptimizerState

        accelerator.register_for_checkpointing(FullOptimizerState(sharded_model, optimizer), schedule, progress)
    else:
        accelerator.register_for_checkpointing(optimizer, schedule, progress)
    resume_dir = Path(resume_dir)
    checkpoint = resume_dir / "state"
    if (checkpoint / RUN_FILE).exists():
        if json.loads((checkpoint / RUN_FILE).read_text()) != config.resume_key():
            raise UldError(f"{resume_dir} holds a run with other settings; delete it or rerun with the same flags")
        accelerator.load_state(str(checkpoint))
        if accelerator.is_main_process:
            tqdm.write(f"resuming at step {progress.step} from {checkpoint}", file=sys.stderr)
    step, history = progress.step, progress.history
    started = time.time() - (history[-1]["wall_s"] if history else 0.0)
    bar = tqdm(total=total, initial=step, desc=desc, unit="step", dynamic_ncols=True, disable=not accelerator.is_main_process)
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        for batch in epoch_batches(epoch)[offset:]:
            logged = _accumulate(accelerator, batch, loss_fn, backward, step, config.grad_accum)
            if sharded_model is None:
                _sum_gradients(accelerator, params)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            logged = {**logged, **getattr(optimizer, "step_log", {})}
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            history.append({"step": step, "epoch": epoch, "wall_s": round(time.time() - started, 2), **logged})
            bar.set_postfix({k: f"{v:.3f}" for k, v in logged.items()})
            bar.update(1)
            if step % config.save_every == 0 and step < total:
                progress.step, progress.history = step, history
                _save(accelerator, resume_dir, config)
            if step >= total:
                break
    bar.close()
    precision = "bf16" if accelerator.mixed_precision == "bf16" else "fp32"
    return {"steps": step, "steps_per_epoch": steps_per_epoch, "precision": precision, "processes": accelerator.num_processes,
            "wall_s": round(time.time() - started, 2), "history": history}


def _accumulate(accelerator, batch, loss_fn, backward, step: int, grad_accum: int) -> dict:
    """Forward and backward over this process's micro-batches; the logged values are the
    row-weighted means over every process's micro-batches."""
    sums = {}
    for micro, share in micro_batches(batch, accelerator.process_index, accelerator.num_processes, grad_accum):
        with accelerator.autocast():
            loss, logged = loss_fn(to_device(micro, accelerator.device))
        if not math.isfinite(logged["loss"]):
            raise UldError(f"the loss became {logged['loss']} at step {step}; lower --lr")
        loss = {k: v * share for k, v in loss.items()} if isinstance(loss, dict) else loss * share
        if backward is None:
            loss.backward()
        else:
            logged = {**logged, **(backward(loss, step) or {})}
        for k, v in logged.items():
            sums[k] = sums.get(k, 0.0) + v * share
    if accelerator.num_processes > 1:
        names = sorted(sums)
        values = accelerator.reduce(torch.tensor([sums[k] for k in names], dtype=torch.float64, device=accelerator.device), "sum")
        sums = dict(zip(names, values.tolist()))
    return sums


def _sum_gradients(accelerator, params: list) -> None:
    """Every process ends the step with the sum of all processes' (share-weighted) gradients."""
    if accelerator.num_processes == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = accelerator.reduce(torch.cat([g.reshape(-1).float() for g in grads]), "sum")
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(p).to(p.dtype)
        offset += g.numel()


def _save(accelerator, resume_dir: Path, config: TrainConfig) -> None:
    """Write the checkpoint beside the last one, then swap it in, so that a kill mid-save
    leaves the previous checkpoint intact."""
    scratch, checkpoint = resume_dir / "state.tmp", resume_dir / "state"
    if accelerator.is_main_process:
        shutil.rmtree(scratch, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(scratch))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (scratch / RUN_FILE).write_text(json.dumps(config.resume_key()))
        old = resume_dir / "state.old"
        if checkpoint.exists():
            checkpoint.rename(old)
        scratch.rename(checkpoint)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
