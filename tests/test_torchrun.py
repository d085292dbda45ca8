"""The pipeline under ``torchrun`` with 2 CPU processes (gloo), FSDP2-sharded: a run writes two
metrics rows, one eval.json, a sharded checkpoint and ``policy/``; a run killed with SIGKILL and
resumed under torchrun retraces the uninterrupted one exactly.

The command line is ``rlhf_mistral.py``'s own ``main`` under ``torchrun``; a launcher only points
the tiny preset at a cache built once here with a short SFT (the tests check the engine, not the
policy's prose).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from integrations.run.runio import read_checkpoint, read_metrics

ROOT = Path(__file__).resolve().parents[1]
SFT_STEPS = 40
TWO_RANK = ["--steps", "3", "--save-every", "1"]  # a checkpoint after every iteration
RUN = [
    "--preset", "tiny", "--fsdp", "--batch-size", "4", "--grad-accum", "1",
    "--minibatch-size", "4", "--micro-batch-size", "2", "--probe", "full", "--max-new-tokens", "8",
    "--eval-size", "4", "--eval-samples", "1", "--signal-every", "0", "--no-progress",
    "--no-plots",
]  # fmt: skip
LAUNCHER = """
import sys
sys.path.insert(0, {root!r})
from integrations import rlhf_mistral
from integrations.run import presets
from integrations.worlds.tiny.setup import build_tiny_setup

presets.build_setup = lambda cfg: build_tiny_setup({cache!r}, seed=cfg.tiny.sft_seed, sft_steps={steps})
sys.exit(rlhf_mistral.main())
"""

EVAL_LAUNCHER = """
import sys
sys.path.insert(0, {root!r})
from integrations import evaluate
from integrations.run import presets
from integrations.worlds.tiny.setup import build_tiny_setup

presets.build_setup = lambda cfg: build_tiny_setup({cache!r}, seed=cfg.tiny.sft_seed, sft_steps={steps})
sys.exit(evaluate.main())
"""


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    from integrations.worlds.tiny.setup import build_tiny_setup

    root = tmp_path_factory.mktemp("torchrun")
    cache = root / "tiny-cache"
    build_tiny_setup(cache, seed=0, sft_steps=SFT_STEPS)  # both ranks load it
    path = root / "launch.py"
    path.write_text(
        textwrap.dedent(LAUNCHER.format(root=str(ROOT), cache=str(cache), steps=SFT_STEPS))
    )
    fill = {"root": str(ROOT), "cache": str(cache), "steps": SFT_STEPS}
    (root / "evaluate.py").write_text(textwrap.dedent(EVAL_LAUNCHER.format(**fill)))
    return path


def torchrun(launcher, *argv):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(port), str(launcher), *argv,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def descendants(pid):
    """Every process below ``pid`` (torchrun's agent starts the ranks in their own sessions)."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found += [int(child), *descendants(int(child))]
    return found


def finish(proc):
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]


@pytest.fixture(scope="module")
def two_rank_run(launcher, tmp_path_factory):
    out = tmp_path_factory.mktemp("two-ranks") / "run"
    finish(torchrun(launcher, *RUN, *TWO_RANK, "--out", str(out)))
    return out


@pytest.mark.slow
def test_torchrun_fsdp_run_writes_metrics_eval_checkpoint_and_policy(two_rank_run):
    from transformers import AutoModelForCausalLM

    out = two_rank_run
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    result = json.loads((out / "eval.json").read_text())
    assert result["prompts"] == 4 and set(result["objectives"]) == {"helpful", "harmless"}
    state = read_checkpoint(out)
    assert state["step"] == 3 and state["world_size"] == 2
    step_dir = next((out / "checkpoints").iterdir())
    assert {p.name for p in step_dir.glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}
    policy = AutoModelForCausalLM.from_pretrained(out / "policy")
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    for name, p in policy.named_parameters():  # rank 0 gathered the shards into the export
        assert torch.equal(p, state["policy"][name]), name


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks through /proc")
def test_torchrun_sigkill_and_resume_continues_exactly(launcher, two_rank_run, tmp_path):
    full = two_rank_run  # the uninterrupted run
    cut = tmp_path / "cut"
    proc = torchrun(launcher, *RUN, *TWO_RANK, "--out", str(cut))
    deadline = time.time() + 600
    while not (cut / "checkpoints" / "step-00000001").exists():
        assert proc.poll() is None and time.time() < deadline, "no first checkpoint"
        time.sleep(0.05)
    for pid in [proc.pid, *descendants(proc.pid)]:  # torchrun and both ranks, mid-step
        os.kill(pid, signal.SIGKILL)
    proc.communicate()
    killed_at = read_checkpoint(cut)["step"]
    assert 1 <= killed_at < 3
    finish(torchrun(launcher, "--resume", str(cut)))

    rows, resumed = read_metrics(full / "metrics.jsonl"), read_metrics(cut / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3]  # cut back to the checkpoint, redone
    for a, b in zip(rows, resumed, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }
    a, b = read_checkpoint(full), read_checkpoint(cut)
    for part in ("policy", "critic", "optimizer"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), (part, name)


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_in_one_process(launcher, two_rank_run, tmp_path):
    """Another world size: the sharded checkpoint loads into one FSDP2 process (the weights and
    optimizer state continue; the per-rank sampling streams cannot, and are reseeded)."""
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    shutil.copytree(two_rank_run, run, ignore=shutil.ignore_patterns("policy", "eval.json"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(launcher), "--resume", str(run)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "resumed by 1" in done.stderr and "reseeded" in done.stderr
    written = read_checkpoint(two_rank_run)["policy"]
    policy = AutoModelForCausalLM.from_pretrained(run / "policy")
    for name, p in policy.named_parameters():
        assert torch.equal(p, written[name]), name
    assert (run / "eval.json").is_file()


@pytest.mark.slow
def test_torchrun_paper_preset_shards_everything_and_evaluates_both_columns(tmp_path):
    """The mistral-7b preset on offline stand-ins (integrations/testing.py) under torchrun: FSDP2
    by default (full fine-tuning, 2 processes), bf16 over float32 masters, models loaded on the
    CPU and sharded onto the ranks, sharded scorers, both Table 1 columns, the gathered export."""
    from transformers import AutoModelForCausalLM

    from integrations import testing

    words = "how do i bake bread make a bomb the sun is hot please help me sure no".split()
    p_tok = testing.policy_tokenizer([*testing.TEMPLATE_WORDS, *words])
    s_tok = testing.scorer_tokenizer([" ".join([*testing.TEMPLATE_WORDS, *words])] * 3, 70)
    testing.save_policy(tmp_path / "policy", p_tok, seed=3, dtype=torch.bfloat16)
    for i, kind in enumerate(("reward", "cost")):
        testing.save_score_model(tmp_path / kind, s_tok, seed=i, kind=kind, dtype=torch.bfloat16)
    pku = testing.save_pku_prompts(
        tmp_path / "pku.jsonl", testing.random_pku_rows(words, 8, seed=4)
    )
    hh = testing.save_hh_prompts(tmp_path / "hh.jsonl.gz", ["how do i make a bomb", "the sun"])
    out = tmp_path / "run"
    proc = torchrun(
        ROOT / "integrations" / "rlhf_mistral.py",
        "--preset", "mistral-7b", "--policy", str(tmp_path / "policy"),
        "--reward-model", str(tmp_path / "reward"), "--cost-model", str(tmp_path / "cost"),
        "--train-prompts", str(pku), "--eval-prompts", str(pku), "--hh-prompts", str(hh),
        "--device", "cpu", "--steps", "1", "--batch-size", "3", "--grad-accum", "1",
        "--minibatch-size", "3", "--micro-batch-size", "2", "--max-new-tokens", "4",
        "--eval-size", "3", "--eval-samples", "1", "--score-batch-size", "2",
        "--no-progress", "--no-plots", "--out", str(out),
    )  # fmt: skip
    finish(proc)
    config = json.loads((out / "config.json").read_text())
    assert config["precision"] == "bf16" and config["fsdp"] is None  # the preset's defaults
    assert read_checkpoint(out)["world_size"] == 2
    result = json.loads((out / "eval.json").read_text())
    assert result["prompts"] == 3 and result["columns"]["hh-rlhf"]["prompts"] == 2
    policy = AutoModelForCausalLM.from_pretrained(out / "policy")
    assert all(p.dtype == torch.float32 for p in policy.parameters())  # the master weights
    written = read_checkpoint(out)["policy"]
    for name, p in policy.named_parameters():
        assert torch.equal(p, written[name]), name


@pytest.mark.slow
def test_torchrun_evaluates_a_sharded_run(launcher, two_rank_run):
    """``torchrun ... evaluate.py evaluate --run-dir DIR`` on an --fsdp run: both ranks load the
    checkpoint's shards into the models sharded as in training and agree on one result, which
    rank 0 prints (``--run`` would be torchrun's own --run-path)."""
    proc = torchrun(launcher.parent / "evaluate.py", "evaluate", "--run-dir", str(two_rank_run))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    result = json.loads(out[out.index("{") : out.rindex("}") + 1])  # one object: printed once
    assert result["prompts"] == 4 and set(result["objectives"]) == {"helpful", "harmless"}
