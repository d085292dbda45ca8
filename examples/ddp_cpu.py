"""MOGD with torch.distributed: DDP (replicated) or FSDP2 (sharded), launched by torchrun.

    torchrun --nproc_per_node=2 examples/ddp_cpu.py              # CPU, gloo, DDP
    torchrun --nproc_per_node=2 examples/ddp_cpu.py --fsdp       # CPU, gloo, FSDP2 fully_shard
    torchrun --nproc_per_node=2 examples/ddp_cpu.py --fsdp --probe   # probe mode on the last layer
    torchrun --nproc_per_node=8 examples/ddp_cpu.py              # the same on 8 GPUs (nccl)
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-endpoint=HOST:29500 examples/ddp_cpu.py

Nothing MOGD-specific is needed for the distributed part: MOGD finds the DDP module that owns the
parameters (and takes over its gradient all-reduce: one bucketed all-reduce of the k per-objective
gradients per step) or sees DTensor parameters (one all-reduce of the k×k Gram per step). Every rank
gets the same weights and clips the same global direction (max_norm); rank 0 prints them.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

import mogd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fsdp", action="store_true", help="shard with FSDP2 fully_shard")
    parser.add_argument("--probe", action="store_true", help="weights from the last layer only")
    parser.add_argument("--max-norm", type=float, default=1.0, help="clip d to this global norm")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)  # same initial weights everywhere (DDP broadcasts them anyway)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 64),
        torch.nn.GELU(),
        torch.nn.Linear(64, 64),
        torch.nn.GELU(),
        torch.nn.Linear(64, 2),
    ).to(device)
    if args.fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(model)
    else:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if cuda else None
        )
    head = model[-1] if args.fsdp else model.module[-1]
    opt = mogd.MOGD(
        torch.optim.AdamW(model.parameters(), lr=3e-3),
        mogd.GAPO(p=1),
        probe=head if args.probe else None,
        max_norm=args.max_norm,
    )
    if rank == 0:
        print(opt)

    gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own data
    for step in range(args.steps):
        x = torch.randn(32, 16, generator=gen).to(device)
        target_a = x[:, :8].sum(1, keepdim=True).tanh()
        target_b = -x[:, 8:].sum(1, keepdim=True).tanh()
        out = model(x)
        losses = [
            (out[:, :1] - target_a).pow(2).mean(),  # objective 0
            (out[:, 1:] - target_b).pow(2).mean() + 0.1 * out[:, :1].pow(2).mean(),  # objective 1
        ]
        losses_now = [loss.detach() for loss in losses]
        opt.zero_grad()
        info = opt.step(losses)
        if rank == 0 and (step % 5 == 0 or step == args.steps - 1):
            logs = info.as_dict(names=("a", "b"))
            print(
                f"step {step:3d}  world {world}  losses {[round(v.item(), 4) for v in losses_now]}  "
                f"weights a={logs['weight/a']:.4f} b={logs['weight/b']:.4f}  "
                f"cos(a,b)={logs['cosine/a/b']:+.3f}  |d|={logs['direction_norm']:.4f}"
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
