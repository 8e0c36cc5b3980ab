"""One training loop for every fitting job: AdamW, linear warmup/decay, optional bf16
autocast, a progress bar, and resumable checkpoints (the data order is a function of the
seed and the epoch, so a resumed run sees exactly the batches it would have seen)."""
import math
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm import tqdm

from uld_serve.core.errors import UldError

PRECISIONS = ("auto", "fp32", "bf16")


def bf16_is_fast() -> bool:
    """Whether oneDNN has a native bf16 path on this CPU (AVX-512 or AMX). Without one (AVX2-only
    machines) bf16 is emulated and far slower than fp32 (BENCHMARKS.md)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str) -> str:
    """`auto` is bf16 autocast where this CPU runs it natively, fp32 elsewhere."""
    if precision != "auto":
        return precision
    return "bf16" if bf16_is_fast() else "fp32"


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@dataclass
class TrainConfig:
    lr: float = 1e-4
    epochs: int = 5
    batch_size: int = 8
    seed: int = 0
    max_steps: Optional[int] = None
    precision: str = "auto"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    save_every: int = 50

    def validate(self):
        if self.precision not in PRECISIONS:
            raise UldError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("epochs", "batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise UldError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise UldError("--max-steps must be at least 1")
        if not self.lr > 0:
            raise UldError("--lr must be positive")
        return self

    def as_dict(self):
        return asdict(self)


def adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the fused update: one kernel over all parameters instead of a loop of small
    ops per tensor (same values to rounding; BENCHMARKS.md has the gain)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def run_training(
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
) -> dict:
    """Train `params`; `epoch_batches(e)` lists epoch e's batches, `loss_fn(batch)` returns
    (loss, {name: float}) with the objective's value under "loss". By default the optimizer is
    AdamW and `loss.backward()` fills the gradients; `make_optimizer(params)` and
    `backward(loss, step)` replace them (second-order and multi-objective methods); a dict it
    returns is logged with the step, and so is an optimizer's `step_log` dict after its step.
    Returns a summary (final logged values, steps, wall time)."""
    config.validate()
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    if make_optimizer is None:
        optimizer = adamw(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = make_optimizer(params)
    warmup = max(1, int(config.warmup_ratio * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    step, history = 0, []
    checkpoint = Path(resume_dir) / "state.pt"
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        if saved["config"] != config.as_dict():
            raise UldError(f"{resume_dir} holds a run with other settings; delete it or rerun with the same flags")
        load_state_fn(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        step, history = saved["step"], saved["history"]
    started = time.time() - (history[-1]["wall_s"] if history else 0.0)
    bar = tqdm(total=total, initial=step, desc=desc, unit="step", dynamic_ncols=True)
    precision = resolve_precision(config.precision)
    if precision == "bf16" and not bf16_is_fast():
        tqdm.write("warning: this CPU has no native bf16 path; bf16 autocast runs far slower than fp32 here (use --precision auto)")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        for batch in epoch_batches(epoch)[offset:]:
            with autocast:
                loss, logged = loss_fn(batch)
            if not math.isfinite(logged["loss"]):
                raise UldError(f"the loss became {logged['loss']} at step {step}; lower --lr")
            if backward is None:
                loss.backward()
            else:
                logged = {**logged, **(backward(loss, step) or {})}
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
                Path(resume_dir).mkdir(parents=True, exist_ok=True)
                tmp = checkpoint.with_suffix(".tmp")
                torch.save(
                    {"config": config.as_dict(), "model": state_fn(), "optimizer": optimizer.state_dict(),
                     "schedule": schedule.state_dict(), "step": step, "history": history},
                    tmp,
                )
                tmp.replace(checkpoint)
            if step >= total:
                break
    bar.close()
    return {"steps": step, "steps_per_epoch": steps_per_epoch, "precision": precision, "wall_s": round(time.time() - started, 2),
            "history": history}
