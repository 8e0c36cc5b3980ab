"""benchmarks/train_bench.py at its CPU shape: the training benchmark that a GPU runs at
Llama-3-8B shape (benchmarks/gpu_session.sh) still runs and reports every row."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_train_bench_runs_at_the_tiny_shape():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_bench.py"), "--shape", "tiny", "--steps", "1",
                             "--seq", "64", "--device", "cpu"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and not line.startswith("| step")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| assistant (K = 1, LoRA r 32)", "| NPO, LoRA r 32 on the whole target",
        "| NPO, all weights, frozen reference (bf16 state)", "| fine-tune, all weights (tiny shape, fp32 master)"]
    assert "per epoch: assistant" in result.stdout
