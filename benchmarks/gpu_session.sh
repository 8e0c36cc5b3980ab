#!/usr/bin/env bash
# The GPU checks of the kernels issue, as one run on a lent H100/H200 (torch and Triton
# preinstalled, nothing downloadable, the repository not installed):
#   the Triton kernel's tests compiled for the GPU, the kernel benchmark with its stage
#   profile and launch sweep, the sparse head benchmark. Logs go to $OUT (or ./gpu-logs).
set -u
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT" /tmp/site
ln -sfn "$PWD/kernels" /tmp/site/uld_kernels
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
ULD_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernel.py 2>&1 | tail -30 | tee "$OUT/tests.log"
timeout 300 python3 benchmarks/kernel_bench.py --profile ${SWEEP---sweep} 2>&1 | tee "$OUT/kernel_bench.md"
timeout 90 python3 benchmarks/sparse_head_bench.py 2>&1 | tee "$OUT/sparse_head.md"
