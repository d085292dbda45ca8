"""Precision and FSDP2 sharding of the pipeline's models (integrations/run/sharding.py).

* bf16 with float32 master weights trains at the paper's lr 1e-6; bf16 weights stepped by AdamW
  round almost every update away (one process with autocast, and FSDP2's MixedPrecisionPolicy).
* MOGD on a Mistral decoder sharded by ``shard_model`` over 2 gloo processes equals one process on
  the concatenated batch (full mode, float32).
* ``gathered``: generation all-gathers each unit once, then decodes with no collective, even
  when the ranks' responses have different lengths; the tokens equal the unsharded model's.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mogd
from integrations.ppo.accumulate import accumulate_objectives, split
from integrations.run import sharding
from integrations.testing import toy_mistral

WORLD = 2
LR = 1e-6


def make_model(seed=0):
    return toy_mistral(64, seed=seed, initializer_range=0.02)


def batch():
    return torch.randint(0, 64, (4, 10), generator=torch.Generator().manual_seed(1))


def losses_of(model, ids):
    logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
    return [-logp[..., 3].mean(), -logp[..., 5].mean()]


def train(model, ids, steps, lr, precision="fp32", sharded=False, probe=False, micro=None):
    """MOGD(AdamW) steps on the mean losses of ``ids``; ``micro``: accumulate each objective's
    gradient over micro-batches of that many sequences (integrations/ppo/accumulate.py)."""
    opt = mogd.MOGD(
        torch.optim.AdamW(model.parameters(), lr=lr),
        mogd.GAPO(p=1),
        probe=model.lm_head if probe else None,
    )
    mask = torch.ones(ids.shape)  # every position counts: the chunks weigh by sequences
    weights = []
    for _ in range(steps):
        opt.zero_grad()

        def losses(chunk):
            with sharding.autocast(precision, "cpu", sharded):
                return losses_of(model, ids[chunk.rows]), None

        chunks = split(torch.arange(len(ids)), mask, micro)
        weights.append(accumulate_objectives(opt, chunks, losses, probe=probe).weights)
    return torch.stack(weights)


def changed_share(before, model):
    after = [p.detach() for p in model.parameters()]
    after = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in after]
    moved = sum(int((a.float() != b.float()).sum()) for a, b in zip(after, before, strict=True))
    return moved / sum(b.numel() for b in before)


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


# ----------------------------------------------------------------------------- one process


def test_master_weights_keep_updates_that_bf16_weights_round_away():
    model = make_model()
    before = snapshot(model)
    train(sharding.master_weights_fp32(model), batch(), steps=3, lr=LR, precision="bf16")
    assert changed_share(before, model) >= 0.5

    bf16_only = make_model().to(torch.bfloat16)  # the scheme this replaces: bf16 params + AdamW
    before = snapshot(bf16_only)
    train(bf16_only, batch(), steps=3, lr=LR)
    assert changed_share(before, bf16_only) < 0.05


def test_bf16_autocast_computes_in_bf16_over_fp32_parameters():
    model = sharding.master_weights_fp32(make_model().to(torch.bfloat16))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with sharding.autocast("bf16", "cpu", sharded=False):
        logits = model(input_ids=batch()).logits
    assert logits.dtype == torch.bfloat16
    with sharding.autocast("bf16", "cpu", sharded=True):  # FSDP2 casts by its policy instead
        assert model(input_ids=batch()).logits.dtype == torch.float32


def test_bad_precision_and_unsharded_master_weights_are_refused():
    with pytest.raises(ValueError, match="--precision must be one of fp32, bf16"):
        sharding.compute_dtype("fp16")
    with pytest.raises(ValueError, match="master weights must be float32"):
        sharding.shard_model(make_model().to(torch.bfloat16), "bf16")
    with pytest.raises(ValueError, match="_no_split_modules"):
        sharding.decoder_layers(torch.nn.Linear(2, 2))


def test_decoder_layers_are_the_transformer_blocks():
    model = make_model()
    assert sharding.decoder_layers(model) == list(model.model.layers)


# ----------------------------------------------------------------------------- two processes


class _AllGatherSpy:
    def __enter__(self):
        self.calls = 0
        self.saved = dist.all_gather_single  # FSDP2's all-gather of one unit's shards

        def spy(*args, **kwargs):
            self.calls += 1
            return self.saved(*args, **kwargs)

        dist.all_gather_single = spy
        return self

    def __exit__(self, *exc):
        dist.all_gather_single = self.saved


def _generate(model, rank):
    torch.manual_seed(rank)
    prompt = batch()[rank : rank + 1, :3]
    with torch.no_grad():  # rank 1 decodes 3x as many tokens as rank 0
        return model.generate(
            input_ids=prompt,
            do_sample=True,
            max_new_tokens=4 + 8 * rank,
            eos_token_id=None,
            pad_token_id=0,
        )


def worker(rank, port, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    res = {}
    ids = batch()[2 * rank : 2 * rank + 2]

    from torch.distributed.fsdp import FSDPModule

    model = make_model()
    res["units"] = len(sharding.decoder_layers(model)) + 1  # the blocks and the root
    sharding.shard_model(model, "fp32")
    assert sum(isinstance(m, FSDPModule) for m in model.modules()) == res["units"]
    res["weights"] = train(model, ids, steps=2, lr=1e-2, sharded=True)
    res["params"] = {n: p.full_tensor() for n, p in model.named_parameters()}
    res["local"] = sum(p.to_local().numel() for p in model.parameters())
    with _AllGatherSpy() as spy:
        with sharding.gathered(model):
            res["tokens"] = _generate(model, rank)
    res["gathers"] = spy.calls
    # after generation the model trains on, resharded
    res["weights_after"] = train(model, ids, steps=1, lr=1e-2, sharded=True)
    res["params_after"] = {n: p.full_tensor() for n, p in model.named_parameters()}

    # probe mode (the LM head's gradients under FSDP2), and accumulation over micro-batches
    model = sharding.shard_model(make_model(), "fp32")
    res["probe"] = train(model, ids, steps=2, lr=1e-2, sharded=True, probe=True)
    res["probe_params"] = {n: p.full_tensor() for n, p in model.named_parameters()}
    model = sharding.shard_model(make_model(), "fp32")
    res["micro"] = train(model, ids, steps=2, lr=1e-2, sharded=True, micro=1)
    res["micro_params"] = {n: p.full_tensor() for n, p in model.named_parameters()}

    model = make_model()
    before = snapshot(model)
    sharding.shard_model(model, "bf16")
    train(model, ids, steps=3, lr=LR, precision="bf16", sharded=True)
    res["bf16_changed"] = changed_share(before, model)
    res["bf16_dtypes"] = {str(p.dtype) for p in model.parameters()}
    torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharding")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_sharded_training_equals_one_process_on_the_concatenated_batch(ranks):
    model = make_model()
    weights = train(model, batch(), steps=2, lr=1e-2)
    for r in ranks:
        torch.testing.assert_close(r["weights"], weights, rtol=0, atol=1e-6)
        for name, p in model.named_parameters():
            torch.testing.assert_close(r["params"][name], p.detach(), rtol=0, atol=1e-5)
    assert sum(r["local"] for r in ranks) == sum(p.numel() for p in model.parameters())
    # and it continues identically after a gathered generation
    weights = train(model, batch(), steps=1, lr=1e-2)
    for r in ranks:
        torch.testing.assert_close(r["weights_after"], weights, rtol=0, atol=1e-6)
        for name, p in model.named_parameters():
            torch.testing.assert_close(r["params_after"][name], p.detach(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["probe", "micro"])
def test_probe_mode_and_accumulation_under_fsdp2_equal_one_process(ranks, mode):
    """Probe mode: weights from the LM head's per-objective gradients, one weighted backward;
    micro: each rank accumulates its 2 sequences one at a time. Against one process on all 4
    sequences in one forward."""
    model = make_model()
    weights = train(model, batch(), steps=2, lr=1e-2, probe=mode == "probe")
    for r in ranks:
        torch.testing.assert_close(r[mode], weights, rtol=0, atol=1e-6)
        for name, p in model.named_parameters():
            torch.testing.assert_close(r[f"{mode}_params"][name], p.detach(), rtol=0, atol=1e-5)


def test_generation_gathers_each_unit_once_and_matches_the_unsharded_model(ranks):
    for rank, r in enumerate(ranks):
        assert r["gathers"] == r["units"]  # not once per decoded token
        model = make_model()
        for name, p in model.named_parameters():
            p.data.copy_(r["params"][name])
        assert torch.equal(r["tokens"], _generate(model, rank))
    assert ranks[1]["tokens"].shape[1] - ranks[0]["tokens"].shape[1] == 8


def test_fsdp2_bf16_keeps_fp32_master_shards_and_moves_them_at_lr_1e_6(ranks):
    for r in ranks:
        assert r["bf16_dtypes"] == {"torch.float32"}
        assert r["bf16_changed"] >= 0.5
