#!/usr/bin/env bash
# The end-to-end ULD benchmark on the embedded default model: the tofu-mini protocol on
# SmolLM2-135M-Instruct, in $ULD_HOME/bench/tofu-mini. tofu_e2e.py fine-tunes the target and
# the retain reference and evaluates them; tune_assistant.py trains the tuned recipe's forget10
# assistant and takes its alpha from the validation split; tofu_e2e.py then trains the paper's
# settings and writes the table with both (BENCHMARKS.md, "End-to-end ULD on TOFU (mini)").
# Hours on 2 cores; every stage is cached, so a rerun resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
TUNED=fast-k15-general-positions-names-e20  # tune_assistant.py's choice (BENCHMARKS.md, "What moved tofu-mini's forget10")
.venv/bin/uld setup --model smollm2-135m-instruct
.venv/bin/python benchmarks/tofu_e2e.py --until eval_target
.venv/bin/python benchmarks/tune_assistant.py --candidates "$TUNED" --unaugmented
exec .venv/bin/python benchmarks/tofu_e2e.py
