"""benchmarks/step_bench.py at its CPU shape: the decode-step benchmark a GPU runs at 8B and 1B
shapes runs every form, and its stacked form (the engine's own stacked_layer) computes what
the assistant-after-the-target form computes."""
import re
import sys

from helpers import REPO, run


def test_step_bench_runs_at_the_tiny_shape_and_the_forms_agree():
    stdout = run(sys.executable, REPO / "benchmarks" / "step_bench.py", "--shape", "tiny", "--device", "cpu",
                 "--batches", "1", "4", "--iters", "2", "--repeats", "1")
    rows = [line.split(" | ")[0] for line in stdout.splitlines() if re.match(r"\| \d", line)]
    assert rows == ["| 1", "| 4"]
    difference = float(re.search(r"max relative difference of the logits (\S+)\)", stdout).group(1))
    assert difference < 1e-5  # fp32: the same arithmetic, summed in another order
