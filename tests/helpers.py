"""What several test modules share: the CLI runner, the engine's test questions and the
filter written the slow, obvious way (fixtures live in conftest.py)."""
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

ULD = [sys.executable, "-c", "from uld_serve.cli import main; main()"]
FAST = ["--max-steps", "2", "--batch-size", "4", "--precision", "fp32"]
REPO = Path(__file__).resolve().parent.parent
# an engine built in the test process starts with this set (conftest.py says why)
SEPARATE_PROCESSES = ("VLLM_ENABLE_V1_MULTIPROCESSING", "1")


def run(*args, cwd=None, env=None) -> str:
    """Run a command to the end and return its stdout; a failure shows the end of its output."""
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def uld(*args, check=True):
    result = subprocess.run([*ULD, *map(str, args)], capture_output=True, text=True, env=os.environ.copy())
    if check and result.returncode != 0:
        raise AssertionError(f"uld {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
    return result


def uld_in_process(*args):
    """`uld` with these arguments run by its entry point in this process (the console script calls
    the same main), for checks of its answers to bad input that need no process of their own; the
    result reads as subprocess.run's."""
    import contextlib
    import io

    from uld_serve.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1  # as the interpreter exits
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def assert_user_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


QUESTIONS = [
    "Who wrote Hamlet?",
    "What genre does Hsiao Yun-Hwa write in, and what is her best-known book?",
    "Hi",
    "Tell me about the author Basil Mahfouz Al-Kuwaiti. " * 12,  # long enough to be prefilled in chunks
]


def brute_force_mask(row: torch.Tensor, r: float) -> torch.Tensor:
    """ULD's filter by sorting, as kernels/README.md states it: lp >= min(max(lp) + log r, k-th largest lp)."""
    lp = torch.log_softmax(row.double(), -1)
    k = max(1, int(r * row.numel()))
    kth = lp.sort(descending=True).values[k - 1]
    threshold = min(lp.max().item() + math.log(r), kth.item())
    return (lp >= threshold) & torch.isfinite(lp)


def amplify_lora(artifact, factor):
    """Three training steps leave LoRA-B tiny; scale it so that tests can tell forget sets apart."""
    from safetensors.torch import load_file, save_file

    path = artifact / "adapter_model.safetensors"
    weights = {k: (v * factor if "lora_B" in k else v) for k, v in load_file(path).items()}
    save_file(weights, path, metadata={"format": "pt"})
