"""Where a job runs: `--device auto|cpu|cuda|cuda:N` for every training and evaluation
command (auto: the GPU when there is one), checked before anything loads."""
import torch

from .errors import UldError

DEVICE_HELP = "auto (the GPU when there is one), cpu, cuda or cuda:N"


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise UldError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if not torch.cuda.is_available():
        raise UldError(f"--device {device}: no CUDA GPU is visible to this process")
    if index and int(index) >= torch.cuda.device_count():
        raise UldError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device(device)
