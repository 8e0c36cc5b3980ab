#!/usr/bin/env bash
# Runs the test suite (tiny random models, real TOFU data, a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
export ULD_HOME="${ULD_HOME:-$(mktemp -d)}"
exec .venv/bin/python -m pytest "$@"
