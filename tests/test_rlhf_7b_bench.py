"""bench/rlhf_7b_gpu.py end to end at toy shapes on the CPU (``--cpu-smoke``): both modes (LoRA
in one process, full fine-tuning under FSDP2 at world size 1) train and report a row, so the GPU
run has nothing left to discover but the numbers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_runs_both_modes_at_toy_shapes(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "rlhf_7b_gpu.py"), "--cpu-smoke"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((tmp_path / "rlhf_7b_gpu.json").read_text())
    assert report["failures"] == {}
    rows = {r["mode"]: r for r in report["rows"]}
    assert set(rows) == {"lora", "fsdp"}
    for r in rows.values():
        assert r["steps_per_s"] > 0 and r["generated_tok_s"] > 0 and r["plan_gib"] > 0
    assert "MOGD bank: k=2 x fp32 gradients" in rows["fsdp"]["plan"]
    assert "policy: bf16 base + fp32 LoRA weights" in rows["lora"]["plan"]
    assert "| lora |" in (tmp_path / "rlhf_7b_gpu.md").read_text()
