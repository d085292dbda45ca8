"""No rank is left waiting: a failure in the work rank 0 does alone (the commit of a checkpoint,
the ``policy/`` export) stops every rank at once with rank 0's message, and what was on disk
before (the previous checkpoint, the previous export) is intact.

The two ranks are started with the environment ``torchrun`` gives its workers (RANK, WORLD_SIZE,
MASTER_ADDR, ...) but without torchrun's agent, which would kill the surviving rank itself as
soon as the other exits: here each rank must find out and exit on its own. The failure is
injected on rank 0 by a launched script that wraps one function of the pipeline.
"""

import hashlib
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from integrations.run.runio import read_checkpoint, read_metrics

ROOT = Path(__file__).resolve().parents[1]
SFT_STEPS = 20
RUN = [
    "--preset", "tiny", "--fsdp", "--batch-size", "4", "--grad-accum", "1",
    "--minibatch-size", "4", "--max-new-tokens", "6",
    "--eval-size", "2", "--eval-samples", "1", "--signal-every", "0", "--no-progress",
    "--no-plots", "--save-every", "1",
]  # fmt: skip
LAUNCHER = """
import os, sys, time
sys.path.insert(0, {root!r})
from integrations import rlhf_mistral
from integrations.run import checkpoint, presets, runio
from integrations.worlds.tiny.setup import build_tiny_setup

presets.build_setup = lambda cfg: build_tiny_setup({cache!r}, seed=cfg.tiny.sft_seed, sft_steps={steps})
where, stamp = os.environ.get("FAIL_AT"), os.environ.get("FAIL_STAMP")


def fail(what):
    with open(stamp, "w") as fh:
        fh.write(repr(time.time()))
    raise OSError(f"injected failure in {{what}} on rank 0")


if where == "checkpoint":  # the commit of the second checkpoint: meta.json written, not renamed
    fsync_tree = checkpoint.fsync_tree

    def failing_fsync_tree(path):
        if path.name == ".step-00000002.tmp":
            fail("checkpoint commit")
        fsync_tree(path)

    checkpoint.fsync_tree = failing_fsync_tree
elif where == "export":  # save_pretrained midway: one file of the new export written
    def failing_save(model, setup, folder):
        (folder / "config.json").write_text("{{}}")
        fail("policy export")

    runio._save_pretrained = failing_save
sys.exit(rlhf_mistral.main())
"""


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    from integrations.worlds.tiny.setup import build_tiny_setup

    root = tmp_path_factory.mktemp("failures")
    cache = root / "tiny-cache"
    build_tiny_setup(cache, seed=0, sft_steps=SFT_STEPS)
    path = root / "launch.py"
    path.write_text(
        textwrap.dedent(LAUNCHER.format(root=str(ROOT), cache=str(cache), steps=SFT_STEPS))
    )
    return path


def two_ranks(launcher, argv, **env):
    """Start both ranks as torchrun's workers; returns ``[(process, exit time)]`` once both
    exited (killed after 180 s: a rank left waiting)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        environ = {
            **os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), **env,
        }  # fmt: skip
        procs.append(
            subprocess.Popen(
                [sys.executable, str(launcher), *argv],
                env=environ,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
        )
    ended: dict[int, float] = {}
    deadline = time.time() + 180
    while len(ended) < 2 and time.time() < deadline:
        for rank, proc in enumerate(procs):
            if rank not in ended and proc.poll() is not None:
                ended[rank] = time.time()
        time.sleep(0.05)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    outputs = [proc.communicate()[0] for proc in procs]
    assert len(ended) == 2, "a rank was left waiting:\n" + "\n".join(o[-3000:] for o in outputs)
    return [(proc, ended[rank], outputs[rank]) for rank, proc in enumerate(procs)]


def digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def check_every_rank_stopped(ranks, stamp: Path, what: str) -> None:
    assert stamp.is_file(), "no failure injected:\n" + ranks[0][2][-3000:]
    failed_at = float(stamp.read_text())
    for rank, (proc, ended, output) in enumerate(ranks):
        assert proc.returncode != 0, output[-3000:]
        assert ended - failed_at < 30, f"rank {rank} exited {ended - failed_at:.1f} s late"
        assert f"injected failure in {what} on rank 0" in output, output[-3000:]
    assert "PeerFailure: rank 0 failed: OSError" in ranks[1][2], ranks[1][2][-3000:]


@pytest.mark.slow
def test_a_failed_checkpoint_commit_stops_every_rank_and_keeps_the_previous_one(launcher, tmp_path):
    out, stamp = tmp_path / "run", tmp_path / "failed-at"
    ranks = two_ranks(
        launcher, [*RUN, "--steps", "3", "--out", str(out)], FAIL_AT="checkpoint",
        FAIL_STAMP=str(stamp),
    )  # fmt: skip
    check_every_rank_stopped(ranks, stamp, "checkpoint commit")
    state = read_checkpoint(out)  # the first checkpoint, complete and readable
    assert state["step"] == 1 and state["world_size"] == 2
    assert [p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")] == [
        "step-00000001"
    ]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]


@pytest.mark.slow
def test_a_failed_export_stops_every_rank_and_keeps_the_previous_export(launcher, tmp_path):
    out, stamp = tmp_path / "run", tmp_path / "failed-at"
    done = two_ranks(launcher, [*RUN, "--steps", "1", "--out", str(out)])
    assert all(proc.returncode == 0 for proc, _, _ in done), done[0][2][-3000:]
    before = digest(out / "policy")
    assert "model.safetensors" in before
    # the finished run resumed: no iteration left, the evaluation and the export again
    ranks = two_ranks(
        launcher, ["--resume", str(out)], FAIL_AT="export", FAIL_STAMP=str(stamp)
    )  # fmt: skip
    check_every_rank_stopped(ranks, stamp, "policy export")
    assert digest(out / "policy") == before
