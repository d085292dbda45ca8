"""MOGD under torch.distributed: 2 processes, gloo, CPU, spawned once for the module.

Every scenario runs the same float64 model on a 16-row batch: each rank gets 8 rows, and the
reference is a single process on the concatenated 16 rows (mean losses, so the average of the two
ranks' gradients is the full-batch gradient).

* DDP, full mode (DDP wrapped before MOGD; and after it, as accelerate.prepare does), DDP probe mode,
  and data parallelism by ``process_group=`` without DDP: weights and parameters equal the
  single-process reference to 1e-6, and StepInfo is identical on both ranks.
* FSDP2 ``fully_shard`` (DTensor parameters): the same equality; the only collective in ``step()`` is
  one all-reduce of the k×k float64 Gram (8k² bytes), nothing is gathered.
* FSDP2 probe mode: the probe's per-objective gradients are averaged into shards (sharded Gram plus
  one k×k all-reduce), and the run equals the single process.
* Clipping (max_norm) under DDP, FSDP2 and FSDP2 probe mode: the global ‖d‖ (all ranks, all shards)
  and the clipped updates equal the single process's.
* A non-finite gradient on one rank makes both ranks skip the same step; with a GradScaler both
  scalers back off together.
* A regularizer outside the trade-off (``regularizer=R`` and ``with opt.regularizer():``), clipped
  with the objectives, under DDP, DDP probe mode, FSDP2 and FSDP2 probe mode: equal to the single
  process (FSDP2's step all-reduces one (k+1)×(k+1) Gram, nothing else), and a non-finite R on one
  rank skips on both.
"""

import math
import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mogd
from mogd.optimizer import MOGD

WORLD = 2
K = 3
STEPS = 3
TOL = 1e-6
CLIP = 0.05  # below every ‖d‖ of these runs: clipping is active at every step


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()


def batch():
    g = torch.Generator().manual_seed(7)
    return torch.randn(16, 4, generator=g, dtype=torch.float64)


def losses_of(model, x, out=None):
    out = model(x) if out is None else out
    return [
        ((out[:, 0] - x[:, 0].sin()) ** 2).mean(),
        ((out[:, 1] - x[:, 1].cos()) ** 2).mean(),
        ((out[:, 2] + out[:, 0] * x[:, 2]) ** 2).mean(),
    ]


def regularizer_of(out):
    """A regularizer R outside the trade-off: a penalty on the outputs' size."""
    return 0.1 * out.pow(2).sum(1).mean()


def make_opt(params, **kw):
    return MOGD(torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01), mogd.GAPO(p=1), **kw)


def flat(params):
    return torch.cat([p.detach().reshape(-1) for p in params])


# ---------------------------------------------------------------------------------------------
# the worker: every scenario, one spawn
# ---------------------------------------------------------------------------------------------


def _train(model, opt, x, form="losses", plant=None, regularize=False):
    """STEPS steps; ``plant=(step, i)`` adds an Inf to loss i (i = K: the regularizer) at that step."""
    infos = []
    for step in range(STEPS):
        opt.zero_grad()
        if form == "losses":
            out = model(x)
            terms = [*losses_of(model, x, out), regularizer_of(out)]  # one forward
            if plant is not None and plant[0] == step:
                terms[plant[1]] = terms[plant[1]] + math.inf * model(x).sum()
            infos.append(opt.step(terms[:K], regularizer=terms[K] if regularize else None))
        else:
            for i in range(K):
                with opt.objective(i):
                    losses_of(model, x)[i].backward()
            if regularize:
                with opt.regularizer():
                    regularizer_of(model(x)).backward()
            infos.append(opt.step())
    return infos


def _info(infos):
    return {
        "weights": torch.stack([i.weights for i in infos]),
        "gram": torch.stack([i.gram for i in infos]),
        "skipped": [i.skipped for i in infos],
        "direction_norm": torch.tensor([i.direction_norm for i in infos], dtype=torch.float64),
        "regularizer_norm": torch.tensor(
            [math.nan if i.regularizer_norm is None else i.regularizer_norm for i in infos],
            dtype=torch.float64,
        ),
    }


class _CollectiveSpy:
    """Records every collective torch.distributed call made while active (name, numel, bytes)."""

    NAMES = (
        "all_reduce",
        "all_gather",
        "all_gather_into_tensor",
        "reduce_scatter_tensor",
        "broadcast",
        "all_to_all_single",
    )

    def __enter__(self):
        self.calls = []
        self.saved = {n: getattr(dist, n) for n in self.NAMES}
        for name, fn in self.saved.items():

            def spy(tensor, *args, _name=name, _fn=fn, **kwargs):
                t = tensor if isinstance(tensor, torch.Tensor) else None
                size = (t.numel(), t.numel() * t.element_size()) if t is not None else (-1, -1)
                self.calls.append((_name, *size))
                return _fn(tensor, *args, **kwargs)

            setattr(dist, name, spy)
        return self

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(dist, name, fn)


def worker(rank, port, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    x = batch()[rank * 8 : (rank + 1) * 8]
    res = {}

    # DDP wrapped first, then MOGD (detected at construction)
    model = DDP(make_model())
    opt = make_opt(model.parameters())
    res["ddp_topology"] = repr(opt)
    res["ddp"] = _info(_train(model, opt, x)) | {"params": flat(model.parameters())}
    res["ddp_sync_off"] = not model.require_backward_grad_sync
    del model, opt

    # MOGD first, DDP after (accelerate.prepare's order): found at the first objective
    base = make_model()
    opt = make_opt(base.parameters())
    model = DDP(base)
    res["ddp_late"] = _info(_train(model, opt, x, form="objective")) | {
        "params": flat(model.parameters())
    }
    del model, opt, base

    # DDP, probe mode: weights from the head's averaged gradients, DDP syncs the one backward
    model = DDP(make_model())
    opt = make_opt(model.parameters(), probe=model.module[2])
    res["ddp_probe"] = _info(_train(model, opt, x)) | {"params": flat(model.parameters())}
    del model, opt

    # plain data parallelism through process_group=
    model = make_model()
    opt = make_opt(model.parameters(), process_group=dist.group.WORLD)
    res["pg"] = _info(_train(model, opt, x)) | {"params": flat(model.parameters())}
    del model, opt

    # FSDP2: DTensor shards
    model = make_model()
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    opt = make_opt(model.parameters())
    infos = _train(model, opt, x, form="objective")
    for i in range(K):  # one more step, spying on step() alone
        with opt.objective(i):
            losses_of(model, x)[i].backward()
    with _CollectiveSpy() as spy:
        infos.append(opt.step())
    res["fsdp"] = _info(infos) | {
        "params": torch.cat([p.full_tensor().reshape(-1) for p in model.parameters()]),
        "collectives": spy.calls,
        "local_numel": sum(p.to_local().numel() for p in model.parameters()),
    }
    del model, opt

    # clipping: DDP, FSDP2, and FSDP2 probe mode (the probe's gradients averaged into shards)
    model = DDP(make_model())
    opt = make_opt(model.parameters(), max_norm=CLIP)
    res["ddp_clip"] = _info(_train(model, opt, x)) | {"params": flat(model.parameters())}
    del model, opt
    for key, probe in (("fsdp_clip", False), ("fsdp_probe", True)):
        model = make_model()
        for layer in (model[0], model[2]):
            fully_shard(layer)
        fully_shard(model)
        opt = make_opt(model.parameters(), max_norm=CLIP, probe=model[2] if probe else None)
        res[key] = _info(_train(model, opt, x, form="losses")) | {
            "params": torch.cat([p.full_tensor().reshape(-1) for p in model.parameters()])
        }
        del model, opt

    # a non-finite gradient on rank 1 only, DDP and FSDP2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model = DDP(make_model())
        opt = make_opt(model.parameters())
        plant = (1, 2) if rank == 1 else None
        res["ddp_nan"] = _info(_train(model, opt, x, plant=plant)) | {
            "params": flat(model.parameters())
        }
        del model, opt
        model = make_model()
        fully_shard(model)
        opt = make_opt(model.parameters())
        res["fsdp_nan"] = _info(_train(model, opt, x, plant=plant))
        del model, opt

    # a regularizer outside the trade-off, clipped with the objectives
    for key, probe in (("ddp_reg", False), ("ddp_probe_reg", True)):
        model = DDP(make_model())
        opt = make_opt(model.parameters(), max_norm=CLIP, probe=model.module[2] if probe else None)
        res[key] = _info(_train(model, opt, x, regularize=True)) | {
            "params": flat(model.parameters())
        }
        del model, opt
    for key, probe in (("fsdp_reg", False), ("fsdp_probe_reg", True)):
        model = make_model()
        for layer in (model[0], model[2]):
            fully_shard(layer)
        fully_shard(model)
        opt = make_opt(model.parameters(), max_norm=CLIP, probe=model[2] if probe else None)
        form = "losses" if probe else "objective"
        infos = _train(model, opt, x, form=form, regularize=True)
        res[key] = _info(infos) | {
            "params": torch.cat([p.full_tensor().reshape(-1) for p in model.parameters()])
        }
        if not probe:  # one more step, spying on step() alone
            for i in range(K):
                with opt.objective(i):
                    losses_of(model, x)[i].backward()
            with opt.regularizer():
                regularizer_of(model(x)).backward()
            with _CollectiveSpy() as spy:
                opt.step()
            res[key]["collectives"] = spy.calls
        del model, opt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model = DDP(make_model())
        opt = make_opt(model.parameters())
        plant = (1, K) if rank == 1 else None
        res["ddp_reg_nan"] = _info(_train(model, opt, x, plant=plant, regularize=True))
        del model, opt

    # GradScaler under DDP: an inf in rank 1's hidden row backs off both scalers
    model = DDP(make_model())
    opt = make_opt(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    scales, skipped = [], []
    for step in range(STEPS):
        opt.zero_grad()
        for i in range(K):
            with opt.objective(i):
                loss = losses_of(model, x)[i]
                if rank == 1 and step == 1 and i == 0:
                    loss = loss + math.inf * model(x).sum()
                scaler.scale(loss).backward()
        skipped.append(scaler.step(opt).skipped)
        scaler.update()
        scales.append(scaler.get_scale())
    res["amp"] = {"scales": scales, "skipped": skipped, "params": flat(model.parameters())}

    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def reference(probe=False, plant_step=None, form="losses", max_norm=None, regularize=False):
    """Single process on the concatenated batch."""
    model = make_model()
    opt = make_opt(model.parameters(), probe=model[2] if probe else None, max_norm=max_norm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        infos = _train(model, opt, batch(), form=form, regularize=regularize)
    return _info(infos) | {"params": flat(model.parameters())}


def assert_same_on_all_ranks(results, key):
    for r in results[1:]:
        assert torch.equal(
            r[key]["weights"].nan_to_num(-1), results[0][key]["weights"].nan_to_num(-1)
        )
        assert torch.equal(r[key]["gram"].nan_to_num(-1), results[0][key]["gram"].nan_to_num(-1))
        assert r[key]["skipped"] == results[0][key]["skipped"]
        assert torch.equal(
            r[key]["direction_norm"].nan_to_num(-1),
            results[0][key]["direction_norm"].nan_to_num(-1),
        )


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["ddp", "ddp_late", "pg"])
def test_replicated_equals_single_process_on_concatenated_batch(ranks, key):
    ref = reference()
    assert_same_on_all_ranks(ranks, key)
    for r in ranks:
        torch.testing.assert_close(r[key]["weights"], ref["weights"], rtol=0, atol=TOL)
        torch.testing.assert_close(r[key]["params"], ref["params"], rtol=0, atol=TOL)
        torch.testing.assert_close(r[key]["gram"], ref["gram"], rtol=TOL, atol=TOL)


def test_ddp_detected_and_its_own_sync_switched_off(ranks):
    assert "replicated(DDP, world_size=2)" in ranks[0]["ddp_topology"]
    assert ranks[0]["ddp_sync_off"]


def test_ddp_probe_mode_equals_single_process(ranks):
    ref = reference(probe=True)
    assert_same_on_all_ranks(ranks, "ddp_probe")
    for r in ranks:
        torch.testing.assert_close(r["ddp_probe"]["weights"], ref["weights"], rtol=0, atol=TOL)
        torch.testing.assert_close(r["ddp_probe"]["params"], ref["params"], rtol=0, atol=TOL)


def test_fsdp2_sharded_equals_single_process(ranks):
    model = make_model()
    opt = make_opt(model.parameters())
    infos = _train(model, opt, batch(), form="objective")
    for i in range(K):
        with opt.objective(i):
            losses_of(model, batch())[i].backward()
    infos.append(opt.step())
    ref = _info(infos) | {"params": flat(model.parameters())}
    assert_same_on_all_ranks(ranks, "fsdp")
    for r in ranks:
        torch.testing.assert_close(r["fsdp"]["weights"], ref["weights"], rtol=0, atol=TOL)
        torch.testing.assert_close(r["fsdp"]["params"], ref["params"], rtol=0, atol=TOL)
    total = sum(p.numel() for p in model.parameters())
    assert sum(r["fsdp"]["local_numel"] for r in ranks) == total  # each rank holds a shard


def test_fsdp2_step_communicates_one_gram_of_k_squared_numbers(ranks):
    for r in ranks:
        calls = r["fsdp"]["collectives"]
        assert calls == [("all_reduce", K * K, 8 * K * K)], calls


@pytest.mark.parametrize(
    ("key", "probe"), [("ddp_clip", False), ("fsdp_clip", False), ("fsdp_probe", True)]
)
def test_clipping_and_probe_mode_equal_single_process(ranks, key, probe):
    """max_norm clips the global d on every rank alike (the norm spans all ranks and shards), and
    FSDP2 probe mode computes the Gram of the averaged probe gradients exactly."""
    ref = reference(probe=probe, max_norm=CLIP)
    assert (ref["direction_norm"] > CLIP).all()  # clipping was active
    assert_same_on_all_ranks(ranks, key)
    for r in ranks:
        torch.testing.assert_close(r[key]["weights"], ref["weights"], rtol=0, atol=TOL)
        torch.testing.assert_close(r[key]["gram"], ref["gram"], rtol=TOL, atol=TOL)
        torch.testing.assert_close(
            r[key]["direction_norm"], ref["direction_norm"], rtol=TOL, atol=0
        )
        torch.testing.assert_close(r[key]["params"], ref["params"], rtol=0, atol=TOL)


def test_nonfinite_on_one_rank_skips_on_every_rank(ranks):
    for key in ("ddp_nan", "fsdp_nan"):
        assert_same_on_all_ranks(ranks, key)
        assert ranks[0][key]["skipped"] == [False, True, False]
    # the skipped step changed nothing: the run equals the reference minus that step's update
    assert torch.equal(ranks[0]["ddp_nan"]["params"], ranks[1]["ddp_nan"]["params"])


def test_grad_scaler_backs_off_on_every_rank(ranks):
    for r in ranks:
        assert r["amp"]["skipped"] == [False, True, False]
        assert r["amp"]["scales"] == [256.0, 128.0, 128.0]
    assert torch.equal(ranks[0]["amp"]["params"], ranks[1]["amp"]["params"])


@pytest.mark.parametrize(
    ("key", "probe"),
    [("ddp_reg", False), ("ddp_probe_reg", True), ("fsdp_reg", False), ("fsdp_probe_reg", True)],
)
def test_regularizer_equals_single_process(ranks, key, probe):
    """The regularizer's gradient is averaged (DDP) or reduce-scattered (FSDP2) like the objectives',
    stays out of the weights and is clipped with them: the run equals one process on the whole
    batch, ‖∇R‖ included."""
    ref = reference(probe=probe, max_norm=CLIP, regularize=True)
    assert (ref["direction_norm"] > CLIP).all()  # clipping was active
    assert_same_on_all_ranks(ranks, key)
    for r in ranks:
        torch.testing.assert_close(r[key]["weights"], ref["weights"], rtol=0, atol=TOL)
        torch.testing.assert_close(r[key]["gram"], ref["gram"], rtol=TOL, atol=TOL)
        torch.testing.assert_close(
            r[key]["direction_norm"], ref["direction_norm"], rtol=TOL, atol=0
        )
        torch.testing.assert_close(
            r[key]["regularizer_norm"], ref["regularizer_norm"], rtol=TOL, atol=0
        )
        torch.testing.assert_close(r[key]["params"], ref["params"], rtol=0, atol=TOL)


def test_fsdp2_step_with_a_regularizer_communicates_one_extended_gram(ranks):
    for r in ranks:
        calls = r["fsdp_reg"]["collectives"]
        assert calls == [("all_reduce", (K + 1) ** 2, 8 * (K + 1) ** 2)], calls


def test_nonfinite_regularizer_on_one_rank_skips_on_every_rank(ranks):
    assert_same_on_all_ranks(ranks, "ddp_reg_nan")
    assert ranks[0]["ddp_reg_nan"]["skipped"] == [False, True, False]
