"""Loading into FSDP2 shards (DESIGN.md §5, integrations/worlds/paper/loading.py): every rank
builds the policy on the meta device and allocates only its shards; rank 0 alone reads the
checkpoint and broadcasts it. Two gloo processes load a ~210 MB (bf16) policy as float32 master
shards; each records its peak resident memory during the load: rank 1 never holds a whole copy,
and the gathered shards are the checkpoint's weights exactly."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, resource, sys
sys.path.insert(0, {root!r})
import psutil, torch
from integrations.run.dist import init_distributed, on_main
from integrations.run.sharding import shard_model
from integrations.worlds.paper.loading import Sharded, load_policy_and_reference, read_weights

d = init_distributed("cpu")
import accelerate, safetensors.torch, transformers  # what the load imports: not the load's memory
from transformers import AutoModelForCausalLM, GenerationConfig
from transformers.models.llama import modeling_llama
before = psutil.Process().memory_info().rss
sharded = Sharded(shard=lambda m, trainable: shard_model(m, "bf16"), on_main=on_main, device="cpu")
policy, _ = load_policy_and_reference(
    {path!r}, sharded, gradient_checkpointing=False, reference=False
)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
local = sum(p.to_local().numel() * p.dtype.itemsize for p in policy.parameters())
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
full = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
same = None
if d.rank == 0:
    stored = read_weights({path!r})
    same = all(
        torch.equal(full[n].to(torch.bfloat16), t) and full[n].dtype == torch.float32
        for n, t in stored.items()
    )
record = {{"rank": d.rank, "delta": peak - before, "local": local, "same": same}}
with open({out!r} + f"/rank{{d.rank}}.json", "w") as fh:
    json.dump(record, fh)
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_ranks_other_than_0_never_hold_a_whole_model_while_loading(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=1024, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    path = tmp_path / "policy"
    model.save_pretrained(path)
    stored = sum(p.numel() for p in model.parameters()) * 2  # bytes of the bf16 checkpoint
    del model
    (tmp_path / "script.py").write_text(
        textwrap.dedent(SCRIPT.format(root=str(ROOT), path=str(path), out=str(tmp_path)))
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(port), str(tmp_path / "script.py")],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    print({r["rank"]: f"{r['delta'] / 2**20:.0f} MiB" for r in ranks}, f"{stored / 2**20:.0f} MiB")
    full_fp32 = 2 * stored
    assert ranks[0]["same"]  # the float32 masters hold the checkpoint's values
    for r in ranks:  # float32 master shards: half the float32 model each
        assert r["local"] == pytest.approx(full_fp32 / 2, rel=0.01)
    # rank 1: its shards (half the float32 model) and one broadcast tensor at a time, never the
    # whole model (the float32 masters of a full copy would be 2x, the bf16 checkpoint 1x more)
    assert ranks[1]["delta"] < 0.75 * full_fp32, ranks
    # rank 0 also read the whole checkpoint: visibly more
    assert ranks[0]["delta"] > ranks[1]["delta"] + 0.5 * stored, ranks
