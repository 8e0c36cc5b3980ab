"""What every fitting job shares around its loop: the data order of an epoch, the resume
directory, the trainable state it checkpoints, and the one writer of its output directory
(weights or adapter, the forget-set manifest or model card, the training log), written
atomically so that an interrupted job leaves nothing half-written."""
import json
import random
import shutil
from pathlib import Path
from typing import Callable, Optional

import torch

from uld_serve.core.artifact import write_manifest
from uld_serve.core.atomic import atomic_dir
from uld_serve.core.tofu import content_hash

from .loop import peak_gpu_mib, peak_rss_mib

TRAINING_LOG = "training_log.json"


def epoch_rng(seed: int, epoch: int) -> random.Random:
    """Epoch e's data order depends on (seed, e) alone, so a resumed run sees the batches it would have seen."""
    return random.Random(seed * 100_003 + epoch)


def steps_per_epoch(examples: int, batch_size: int) -> int:
    return -(-examples // batch_size)


def resume_dir(out: Path) -> Path:
    """Where a job's checkpoints live until its output is written (beside the output, hidden)."""
    out = Path(out)
    return out.parent / f".{out.name}.resume"


def trainable_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def data_record(spec: str, pairs, **extra) -> dict:
    """How a manifest names the data a forget set was trained on."""
    return {"spec": spec, "num_examples": len(pairs), "sha256": content_hash(pairs), **extra}


def result_record(summary: dict, trainable_params) -> dict:
    """A manifest's `result`: steps, time, where it ran, memory, sizes and the last logged values."""
    last = summary["history"][-1] if summary["history"] else {}
    params = list(trainable_params)
    device = params[0].device if params else torch.device("cpu")
    return {"steps": summary["steps"], "steps_per_epoch": summary["steps_per_epoch"], "wall_s": summary["wall_s"],
            "precision": summary["precision"], "device": str(device), "processes": summary["processes"],
            "trainable_parameters": sum(p.numel() for p in params), "peak_rss_mib": peak_rss_mib(),
            "peak_gpu_mib": peak_gpu_mib(device), **{k: v for k, v in last.items() if k not in ("step", "epoch", "wall_s")}}


def write_output(accelerator, out: Path, save: Callable[[Path], None], history: list, manifest: Optional[dict] = None,
                 extra_files: Optional[dict] = None) -> Path:
    """Write a job's output directory in one rename (the main process; the others wait):
    `save(dir)` writes the weights or adapter, then the manifest (forget sets), `extra_files`
    (name -> JSON value) and the training log; the resume directory goes once the output is in place."""
    out = Path(out)
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return out
    with atomic_dir(out) as tmp:
        save(tmp)
        if manifest is not None:
            write_manifest(tmp, manifest)
        for name, value in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(value, indent=2) + "\n")
        (tmp / TRAINING_LOG).write_text(json.dumps(history) + "\n")
    shutil.rmtree(resume_dir(out), ignore_errors=True)
    accelerator.wait_for_everyone()
    return out
