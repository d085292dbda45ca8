"""Run checkpoints (integrations/run/checkpoint.py): DCP round trips, atomicity under SIGKILL, loading
at another world size (2 gloo processes with FSDP2 -> 1 process and back), RNG streams, and
crafted checkpoints that must be refused without running their code."""

import json
import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from integrations.run import checkpoint

ROOT = Path(__file__).resolve().parents[1]


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def trained(seed=0, steps=2):
    model = make_model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(seed))
    for _ in range(steps):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return model, opt


def state_of(model, opt):
    msd, osd = get_state_dict(model, opt)
    return {"model": msd, "optim": osd}


def flat_optimizer(opt):
    return torch.cat(
        [
            torch.stack([s["exp_avg"].sum(), s["exp_avg_sq"].sum(), s["step"]])
            for s in opt.state.values()
        ]
    )


def test_round_trip_restores_model_optimizer_and_meta(tmp_path):
    model, opt = trained()
    path = checkpoint.save(tmp_path, 7, state_of(model, opt), {"config_hash": "abc"})
    assert path == checkpoint.latest_checkpoint(tmp_path)
    meta = checkpoint.read_meta(path)
    assert meta["step"] == 7 and meta["world_size"] == 1 and meta["config_hash"] == "abc"

    fresh, fresh_opt = trained(seed=1, steps=1)  # other values and other optimizer state
    state = state_of(fresh, fresh_opt)
    checkpoint.load(path, state)
    set_state_dict(
        fresh, fresh_opt, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(flat_optimizer(opt), flat_optimizer(fresh_opt))
    assert fresh_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_keeps_the_newest_and_ignores_temporary_directories(tmp_path):
    model, opt = trained()
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, state_of(model, opt), {}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002", "step-00000003"]
    # an interrupted save: a temporary directory, and a step directory without meta.json
    (tmp_path / ".step-00000009.tmp").mkdir()
    (tmp_path / "step-00000008").mkdir()
    assert checkpoint.latest_checkpoint(tmp_path).name == "step-00000003"
    checkpoint.save(tmp_path, 4, state_of(model, opt), {}, keep=2)
    assert not (tmp_path / ".step-00000009.tmp").exists()


def test_rng_streams_continue_exactly(tmp_path):
    model, opt = trained()
    random.seed(3)
    np.random.seed(4)  # noqa: NPY002
    torch.manual_seed(5)
    path = checkpoint.save(tmp_path, 1, state_of(model, opt), {})
    expected = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002
    torch.manual_seed(0)
    assert checkpoint.restore_rng(path)
    got = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_rng_not_restored_at_another_world_size(tmp_path):
    model, opt = trained()
    path = checkpoint.save(tmp_path, 1, state_of(model, opt), {})
    meta = json.loads((path / "meta.json").read_text())
    meta["world_size"] = 2
    (path / "meta.json").write_text(json.dumps(meta))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert not checkpoint.restore_rng(path)
    assert torch.equal(torch.get_rng_state(), before)


# ----------------------------------------------------------------------------- crafted checkpoints


class _Payload:
    """Unpickling this runs code: it creates the file ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_crafted_metadata_is_refused_without_running_it(tmp_path):
    model, opt = trained()
    path = checkpoint.save(tmp_path / "ck", 1, state_of(model, opt), {})
    marker = tmp_path / "pwned"
    (path / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(checkpoint.CheckpointError, match="not part of a checkpoint"):
        checkpoint.load(path, state_of(*trained(seed=1)))
    assert not marker.exists()
    # the same payload through DCP's own reader runs: the reason for the safe one
    import torch.distributed.checkpoint as dcp

    with pytest.raises(dcp.CheckpointException):  # it fails only after the payload ran
        dcp.load(state_of(*trained(seed=1)), checkpoint_id=path, no_dist=True)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_crafted_value_is_refused_without_running_it(tmp_path):
    import torch.distributed.checkpoint as dcp

    marker = tmp_path / "pwned"
    path = tmp_path / "ck" / "step-00000001"
    dcp.save({"extra": {"note": _Payload(marker)}}, checkpoint_id=path, no_dist=True)
    assert not marker.exists()  # torch.save pickled the payload; nothing ran
    (path / "meta.json").write_text(
        json.dumps({"format": checkpoint.FORMAT, "step": 1, "world_size": 1})
    )
    with pytest.raises(checkpoint.CheckpointError, match="not plain data"):
        checkpoint.load(path, {"extra": {"note": "placeholder"}})
    assert not marker.exists()


def test_crafted_rng_state_is_refused(tmp_path):
    model, opt = trained()
    path = checkpoint.save(tmp_path, 1, state_of(model, opt), {})
    (path / "rng-rank0.safetensors").write_bytes(pickle.dumps(_Payload(tmp_path / "pwned")))
    with pytest.raises(checkpoint.CheckpointError, match="RNG state"):
        checkpoint.restore_rng(path)
    assert not (tmp_path / "pwned").exists()


def test_meta_of_another_program_is_refused(tmp_path):
    (tmp_path / "step-00000001").mkdir()
    (tmp_path / "step-00000001" / "meta.json").write_text('{"step": 1}')
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint record"):
        checkpoint.read_meta(tmp_path / "step-00000001")


# ----------------------------------------------------------------------------- SIGKILL mid-save


SAVER = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {root!r})
    from integrations.run import checkpoint
    torch.manual_seed(0)
    big = torch.nn.Linear(512, 512)
    step = 0
    while True:
        step += 1
        with torch.no_grad():
            big.weight.fill_(step)
        checkpoint.save({out!r}, step, {{"model": big.state_dict()}}, {{"value": step}}, keep=2)
        print(step, flush=True)
    """
)


def test_sigkill_at_any_moment_leaves_complete_checkpoints(tmp_path):
    out = tmp_path / "cks"
    script = SAVER.format(root=str(ROOT), out=str(out))
    rng = random.Random(0)
    for trial in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.readline()  # one checkpoint exists
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        latest = checkpoint.latest_checkpoint(out)
        assert latest is not None, trial
        for path in [p for p in out.iterdir() if not p.name.startswith(".")]:
            step = checkpoint.read_meta(path)["value"]
            state = {"model": torch.nn.Linear(512, 512).state_dict()}
            checkpoint.load(path, state)
            assert torch.all(state["model"]["weight"] == step)


# ----------------------------------------------------------------------------- world sizes


def _fsdp_worker(rank, port, out, mode):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.fsdp import fully_shard

    if mode == "save":
        model, opt = trained()
        fully_shard(model[0])
        fully_shard(model)
        # the optimizer state was made before sharding: rebuild it on the shards by training
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
        for _ in range(2):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        checkpoint.save(Path(out) / "from2", 2, state_of(model, opt), {})
        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd, osd = get_state_dict(model, opt, options=full)
        if rank == 0:
            torch.save({"model": msd, "optim": osd}, Path(out) / "full2.pt")
    else:  # load a single-process checkpoint into two shards
        model = make_model(seed=3)
        fully_shard(model[0])
        fully_shard(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model(torch.zeros(1, 6)).sum().backward()
        opt.step()
        state = state_of(model, opt)
        checkpoint.load(Path(out) / "from1" / "step-00000002", state)
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd, osd = get_state_dict(model, opt, options=full)
        if rank == 0:
            torch.save({"model": msd, "optim": osd}, Path(out) / "loaded2.pt")
    dist.barrier()
    dist.destroy_process_group()


def _spawn(out, mode):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fsdp_worker, args=(port, str(out), mode), nprocs=2, join=True)


def _assert_same_state(a, b):
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    for key, s in a["optim"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(s[name], b["optim"]["state"][key][name], rtol=0, atol=0)


def test_two_shards_load_into_one_process_and_back(tmp_path):
    _spawn(tmp_path, "save")
    written = torch.load(tmp_path / "full2.pt", weights_only=True)
    # 2 -> 1: a plain model and optimizer read the sharded checkpoint
    model, opt = trained(seed=5, steps=1)
    state = state_of(model, opt)
    checkpoint.load(checkpoint.latest_checkpoint(tmp_path / "from2"), state)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    _assert_same_state(written, state_of(model, opt))
    # 1 -> 2: the single process's checkpoint loads into FSDP2 shards
    checkpoint.save(tmp_path / "from1", 2, state_of(model, opt), {})
    _spawn(tmp_path, "load")
    _assert_same_state(written, torch.load(tmp_path / "loaded2.pt", weights_only=True))
