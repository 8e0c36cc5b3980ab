#!/usr/bin/env bash
# The main job on the embedded default model: serve SmolLM2-135M-Instruct, taught four
# fictitious TOFU authors, with a ULD forget set for two of them (both trained here on first
# use, a few minutes on 2 cores, then cached under $ULD_HOME). OpenAI-compatible endpoint on
# http://127.0.0.1:8000; README "Two commands" shows what to ask it. Extra flags go to `uld demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/uld demo "$@"
