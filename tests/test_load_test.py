"""benchmarks/load_test.py at CI size (tiny-random, 64 requests at once, `uld serve` only):
no request lost or failed, and every greedy answer equal to the same request sent alone."""
import json
import sys

import pytest

from helpers import REPO, run

pytestmark = pytest.mark.vllm


def test_load_test_at_ci_size(tiny_target, forget_sets, tmp_path):
    out = tmp_path / "rows.json"
    run(sys.executable, REPO / "benchmarks" / "load_test.py", "--target", tiny_target, "--forget-set", forget_sets["f1"],
        "--forget-set", forget_sets["f2"], "--requests", "64", "--concurrency", "64", "--max-tokens", "8", "--skip-plain",
        "--json", out)
    (row,) = json.loads(out.read_text())
    assert row["requests"] == 64 and row["failures"] == 0 and row["statuses"] == {"200": 64}
    assert row["equal_to_serial"] == 64
