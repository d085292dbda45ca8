#!/usr/bin/env bash
# The GPU checks of issues 4 and 7 as ONE command for a lent H100/H200 (device time is scarce):
# kernel bandwidth table, the CUDA tests of the kernels, then the RLHF pipeline at a few hundred
# million parameters. Each part has its own time limit and writes to $OUT as it goes.
#   bash bench/gpu_checks.sh        (from the repo root; needs torch with CUDA, triton, transformers)
set -u
OUT=${OUT:-/tmp/mogd_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
# mogd.kernels is the top-level kernels/ folder (setuptools package-dir); a link stands in for the
# editable install, which would cost device time.
[ -e mogd/kernels ] || ln -s ../kernels mogd/kernels
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
timeout "${KERNELS_S:-80}" python bench/kernels_gpu.py 2>&1 | tee "$OUT/kernels_gpu.txt"
timeout "${TESTS_S:-50}" python -m pytest tests/test_kernels_triton.py -k cuda -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/tests_cuda.txt" | tail -15
timeout "${RLHF_S:-90}" python bench/rlhf_gpu.py 2>&1 | tee "$OUT/rlhf_gpu.txt" | tail -40
