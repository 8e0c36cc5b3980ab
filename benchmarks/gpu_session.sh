#!/usr/bin/env bash
# The GPU checks, as one run on a lent H100/H200 (torch, Triton, transformers, peft and
# accelerate preinstalled; no vLLM, nothing downloadable, the repository not installed).
# First, on the CPU machine: benchmarks/gpu_prepare.sh (the test model and pure-Python
# packages, in .gpu/), then with the device tool:
#   run(command="bash benchmarks/gpu_session.sh", carry=[".gpu"], timeout_s=540)
# STAGES picks what runs (default "tests train": 8 minutes at the very most, by the timeouts):
#   tests   the Triton kernel's tests compiled for the GPU, then the training, evaluation and
#           reference-decoding tests with ULD_TEST_DEVICE=cuda (the vLLM tests are left out)
#   train   benchmarks/train_bench.py at Llama-3-8B shape (assistant, NPO LoRA and all weights, 1B fine-tune)
#   kernel  the kernel benchmark with its stage profile and launch sweep, the sparse head benchmark
#   step    benchmarks/step_bench.py: a decode step's three forms (plain, assistant after, stacked) at 8B and 1B
# Logs go to $OUT (or ./gpu-logs).
set -u
OUT=${OUT:-gpu-logs}
STAGES=${STAGES:-tests train}
mkdir -p "$OUT" /tmp/site
ln -sfn "$PWD/kernels" /tmp/site/uld_kernels
ln -sfn "$PWD/training" /tmp/site/uld_training
export PYTHONPATH=/tmp/site:$PWD:$PWD/.gpu/site PYTHONUNBUFFERED=1 ULD_HOME=$PWD/.gpu/home HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers, peft, accelerate; print('torch', torch.__version__, 'triton', triton.__version__,
'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/gpu.txt"
has() { python3 -c "import $1" 2>/dev/null; }
if [[ " $STAGES " == *" tests "* ]]; then
  ULD_TEST_DEVICE=cuda timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernel.py 2>&1 | tail -30 | tee "$OUT/tests.log"
  GPU_TESTS="tests/test_training.py tests/test_assistant.py tests/test_unlearn.py tests/test_unlearn_losses.py
    tests/test_unlearn_optimizers.py tests/test_geffect.py tests/test_reference_decoding.py tests/test_settings.py
    tests/test_logit_difference.py"
  # the evaluation's statistics need scipy, which the lent machine may lack (too large to carry)
  has scipy && GPU_TESTS="$GPU_TESTS tests/test_metrics.py tests/test_tofu_eval_resume.py tests/test_alpha_curve.py" \
    || echo "no scipy: evaluation tests left out" | tee -a "$OUT/tests.log"
  has matplotlib || { GPU_TESTS="${GPU_TESTS/tests\/test_geffect.py/}"; echo "no matplotlib: G-effect tests left out" | tee -a "$OUT/tests.log"; }
  ULD_TEST_DEVICE=cuda timeout 200 python3 -m pytest -q -p no:cacheprovider -m "not vllm" $GPU_TESTS 2>&1 | tail -40 | tee -a "$OUT/tests.log"
fi
if [[ " $STAGES " == *" train "* ]]; then
  timeout 150 python3 benchmarks/train_bench.py --shape 8b 2>&1 | tee "$OUT/train_bench.md"
fi
if [[ " $STAGES " == *" step "* ]]; then
  timeout 240 python3 benchmarks/step_bench.py 2>&1 | tee "$OUT/step_bench.md"
fi
if [[ " $STAGES " == *" kernel "* ]]; then
  timeout 300 python3 benchmarks/kernel_bench.py --profile ${SWEEP---sweep} 2>&1 | tee "$OUT/kernel_bench.md"
  timeout 90 python3 benchmarks/sparse_head_bench.py 2>&1 | tee "$OUT/sparse_head.md"
fi
