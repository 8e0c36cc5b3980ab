#!/usr/bin/env bash
# Prepares, on the CPU machine, what the lent GPU machine lacks for benchmarks/gpu_session.sh:
# it has torch, Triton, transformers, peft and accelerate but no network, no vLLM and not the
# embedded model's package. So .gpu/ (git-ignored) gets the tiny-random test model (weights
# in bf16, to keep the carried files small) as ULD_HOME, and the pure-Python packages the
# tests import (rouge-score, typer, ...) as a site folder. Then, with the device tool:
#   run(command="bash benchmarks/gpu_session.sh", carry=[".gpu"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu
mkdir -p .gpu/home .gpu/site
ULD_HOME="$PWD/.gpu/home" .venv/bin/uld setup --model tiny-random >/dev/null
.venv/bin/python - <<'PY'
from pathlib import Path

from safetensors.torch import load_file, save_file

path = Path(".gpu/home/models/tiny-random/model.safetensors")
save_file({k: v.bfloat16() for k, v in load_file(path).items()}, path, metadata={"format": "pt"})
PY
rm -f .gpu/home/models/tiny-random/.uld_fingerprint.json
.venv/bin/python -m pip install -q --no-deps --target .gpu/site rouge-score nltk absl-py six typer click shellingham joblib defusedxml
du -sh .gpu
