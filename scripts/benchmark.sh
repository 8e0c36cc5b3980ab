#!/usr/bin/env bash
# The end-to-end ULD benchmark on the embedded default model: the tofu-mini protocol on
# SmolLM2-135M-Instruct (fine-tune target and retain reference, train two forget10
# assistants, the tuned recipe and the paper's settings, evaluate them all). Stages are cached under $ULD_HOME, so a rerun resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/uld setup --model smollm2-135m-instruct
exec .venv/bin/python benchmarks/tofu_e2e.py "$@"
