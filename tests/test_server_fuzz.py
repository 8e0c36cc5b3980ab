"""Contract fuzzing of `uld serve` with schemathesis over the server's own OpenAPI document:
generated requests to the completion, model and admin routes, with an admin key, must never
get a 5xx. CI runs about 200 cases (ULD_FUZZ_EXAMPLES per operation); BENCHMARKS.md records
a run of more than 1000."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_server import ADMIN, start_server

pytestmark = pytest.mark.vllm

ROUTES = r"^/(v1/chat/completions|v1/completions|v1/models|admin/forget-sets.*)$"


def test_generated_requests_never_get_a_server_error(tiny_target, forget_sets, tmp_path):
    process, url = start_server(tiny_target, forget_sets, tmp_path, "--max-tokens", "8", "--max-n", "2")
    try:
        examples = os.environ.get("ULD_FUZZ_EXAMPLES", "34")
        schemathesis = Path(sys.executable).parent / "schemathesis"
        result = subprocess.run(
            [str(schemathesis), "run", f"{url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", examples,
             "--include-path-regex", ROUTES, "--header", f"Authorization: Bearer {ADMIN}", "--seed", "0",
             "--phases", "examples,coverage,fuzzing", "--request-timeout", "60", "--no-color"],
            capture_output=True, text=True, timeout=1500)
    finally:
        process.terminate()
        process.wait(timeout=90)
    output = result.stdout + result.stderr
    print(output[-3000:])
    generated = int(re.search(r"(\d+) generated", output).group(1))
    assert result.returncode == 0, output[-4000:]
    assert generated >= 6 * int(examples)
