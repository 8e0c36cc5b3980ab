"""benchmarks/train_bench.py at its CPU shape: the training benchmark that a GPU runs at
Llama-3-8B shape (benchmarks/gpu_session.sh) still runs and reports every row."""
import sys

from helpers import REPO, run


def test_train_bench_runs_at_the_tiny_shape():
    stdout = run(sys.executable, REPO / "benchmarks" / "train_bench.py", "--shape", "tiny", "--steps", "1", "--seq", "64",
                 "--device", "cpu")
    rows = [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| step")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| assistant (K = 1, LoRA r 32)", "| NPO, LoRA r 32 on the whole target",
        "| NPO, all weights, frozen reference (bf16 state)", "| fine-tune, all weights (tiny shape, fp32 master)"]
    assert "per epoch: assistant" in stdout
