"""Multi-objective RLHF with PPO and mogd.MOGD: the training loop of the GAPO paper, App. B.

    python integrations/rlhf_mistral.py --preset tiny --method gapo --p 1 --seed 0 --out runs/x
    python integrations/rlhf_mistral.py --resume runs/x          # continue exactly where it stopped
    python integrations/rlhf_mistral.py --preset mistral-7b --dry-run --json   # config + memory plan
    python integrations/rlhf_mistral.py --help                    # every option with its defaults
    torchrun --nproc_per_node 8 integrations/rlhf_mistral.py --preset mistral-7b   # FSDP2, 8 GPUs

One PPO iteration ("step"):
  1. rollout: sample one response per prompt from the policy;
  2. score every response with every objective's scorer (reward R, or cost C -> reward -C);
  3. per-token KL shaping r̂_t = r_t − β(log π − log π_ref) in every stream, GAE with one critic
     value per stream (integrations/ppo.py);
  4. one clipped PPO surrogate per objective; the policy update goes through mogd.MOGD, which
     turns the per-objective gradients into one direction (GAPO / MGDA / P-GAPO weights), each
     objective's gradient accumulated over --micro-batch-size micro-batches;
  5. the critics regress the GAE returns (separate optimizer);
  6. log one metrics row, checkpoint every --save-every iterations.

Methods (--method, integrations/methods.py): gapo, mgda, pgapo, morlhf, fast-rl, ppo-h, ppo-s,
safe-rlhf.
Options and presets: integrations/config.py; precision and FSDP2 sharding: integrations/sharding.py.
Outputs in --out: config.json, metrics.jsonl, checkpoints/ (sharded DCP, integrations/checkpoint.py),
plots.png, eval.json and policy/ (Hugging Face format; integrations/runio.py).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:
    # `python integrations/rlhf_mistral.py`: Python put integrations/ first on sys.path, where
    # trl.py would shadow the TRL package. Import the package from the checkout instead, with the
    # root after site-packages so that nothing in the checkout hides an installed distribution.
    del sys.path[0]
    sys.path.append(str(Path(__file__).resolve().parents[1]))
    __package__ = "integrations"

import torch
from torch.profiler import record_function

import mogd
from mogd.distributed import is_sharded

from . import ppo, presets
from .accumulate import MicroBatch, accumulate_objectives, split
from .common import find_module
from .config import Config, fsdp_enabled, parse_config, total_steps, validate
from .critics import build_critic, disable_dropout
from .dist import (
    all_reduce_grads,
    barrier,
    close_distributed,
    gather,
    gather_rows,
    init_distributed,
    process_group,
    resolve_device,
    seed_everything,
)
from .gradient_signal import half_batch_cosines
from .heldout import evaluate_policy
from .methods import RewardWeights, make_plan
from .rollout import (
    Rollout,
    decoding,
    forward_response,
    generate,
    objective_rewards,
    prompt_indices,
    score,
)
from .runio import (
    append_metrics,
    open_run,
    plot_metrics,
    progress_postfix,
    record,
    restore,
    save_checkpoint,
    save_policy,
    step_metrics,
    truncate_metrics,
    weigh,
    write_config,
    write_eval,
)
from .sharding import (
    autocast,
    clip_grad_norm_,
    ensure_process_group,
    gathered,
    master_weights_fp32,
    shard_model,
    shard_trunks,
)


def train(cfg: Config, resume_state: dict[str, Any] | None = None) -> Path:
    """Train one run; returns its directory (config.json, metrics.jsonl, checkpoints/, ...).

    ``resume_state``: what :func:`integrations.runio.open_run` returned (called here if not given).
    """
    validate(cfg)
    if resume_state is None:
        resume_state = open_run(cfg)
    from tqdm.auto import tqdm

    device = resolve_device(cfg.device)
    d = init_distributed(device)
    out = Path(str(cfg.out))
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume:
            write_config(out, cfg)

    # -- models: same initial weights on every rank, then per-rank sampling streams
    seed_everything(cfg.seed)
    setup = presets.build_setup(cfg)
    scorers = presets.select_scorers(cfg, setup)
    plan = make_plan(cfg.method, scorers, p=cfg.p, update=cfg.update, preference=cfg.preference)
    policy, reference = setup.policy, setup.reference
    disable_dropout(policy)  # the old and new log-probs of a sample must agree exactly
    critic = build_critic(cfg, setup, plan, device)
    head_critic = cfg.critic_init == "head"  # values read the policy's own hidden states
    # -- precision and sharding (integrations/sharding.py): trained weights are float32 masters
    # at every precision; FSDP2 shards every transformer (policy, reference, scorers, critics)
    fsdp = fsdp_enabled(cfg, d.world)
    master_weights_fp32(policy)
    master_weights_fp32(critic)
    if fsdp:
        ensure_process_group(device)
        shard_model(policy, cfg.precision)
        if reference is not None:
            shard_model(reference, cfg.precision)
        shard_trunks(critic, cfg.precision, device)  # value heads stay float32, replicated
        for scorer in scorers:  # bf16 backbones, as they were trained; float32 score heads
            if isinstance(getattr(scorer, "model", None), torch.nn.Module):
                shard_trunks(scorer.model, "bf16", device)  # type: ignore[attr-defined]
    amp = functools.partial(autocast, cfg.precision, device, fsdp)  # bf16 in one process
    probe = None if cfg.probe == "full" else find_module(policy, cfg.probe, "--probe")

    steps = total_steps(cfg, len(setup.train_prompts), d.world)
    rollout_size = cfg.batch_size * cfg.grad_accum  # prompts per iteration per process
    update_size = cfg.minibatch_size * cfg.grad_accum  # sequences per optimizer step
    trainable = [p for p in policy.parameters() if p.requires_grad]
    inner = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    opt = mogd.MOGD(
        inner,
        plan.weighting,
        probe=probe,
        max_norm=cfg.max_grad_norm,  # clips the combined direction d, as Safe RLHF clips its step
        process_group=None if fsdp else process_group(d),  # DTensor shards carry their mesh
    )
    total_updates = steps * cfg.ppo_epochs * math.ceil(rollout_size / update_size)
    sched = ppo.warmup_cosine(opt, round(cfg.warmup_ratio * total_updates), total_updates)
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr, weight_decay=0.0)
    lagrangians = [
        ppo.Lagrangian(
            threshold=cfg.lambda_threshold,
            lambda_init=cfg.lambda_init,
            lambda_lr=cfg.lambda_lr,
            lambda_max=cfg.lambda_max,
            update_delay=cfg.lambda_update_delay,
            window=cfg.episode_cost_window,
        )
        for _ in plan.cost_streams
    ]
    # fast-rl: the scalarised stream's reward weights move by mirror descent between updates
    reward_weights = RewardWeights(len(scorers), cfg.weight_lr) if cfg.method == "fast-rl" else None
    dec = decoding(cfg)  # the sampling distribution, whose log-probs PPO's ratio uses

    start = 0
    if resume_state is not None:
        start = resume_state["step"]
        restore(
            resume_state, policy, critic, opt, sched, critic_opt, lagrangians, d, reward_weights
        )
        if d.main:
            truncate_metrics(out / "metrics.jsonl", start)
    else:
        torch.manual_seed(cfg.seed + 1000 * d.rank)  # each rank samples different responses

    bar = tqdm(
        range(start, steps),
        initial=start,
        total=steps,
        disable=not (cfg.progress and d.main),
        desc=f"{cfg.method}",
        dynamic_ncols=True,
    )
    for step in bar:
        t0 = time.time()
        stats: dict[str, list[float]] = {}  # per-iteration means go to metrics.jsonl
        n = len(setup.train_prompts)
        indices = prompt_indices(step, rollout_size, n, cfg.seed, d.rank, d.world)
        prompts = [setup.train_prompts[i] for i in indices]

        # 1-2. rollout and scores
        with record_function("rollout"), gathered(policy), amp():
            ro = generate(setup, policy, prompts, cfg)  # FSDP2: one all-gather, not per token
        with record_function("score"):
            raw = score(scorers, ro)  # [K, B]
            rewards = objective_rewards(scorers, raw).clamp(-cfg.score_clip, cfg.score_clip)
            if reward_weights is not None:  # Li et al.: the weights step, then the policy
                means = torch.stack([gather(r, d).mean() for r in rewards])
                plan.mix = reward_weights.update(means).float()[None, :]
                for s_, w in zip(scorers, reward_weights.weights.tolist(), strict=True):
                    record(stats, f"reward_weight/{s_.name}", w)
            stream_scores = (plan.mix @ rewards).to(device)  # [S, B]
        # safe-rlhf: the dual step on each constraint's moving mean cost, before the update that
        # uses λ (Safe RLHF's order: record this batch's episode costs, step λ, then PPO)
        for lag, j in zip(lagrangians, plan.cost_streams, strict=True):
            lag.record(gather(raw[j], d))
            lag.update(step)
        multipliers = [lag.value for lag in lagrangians]
        lr = opt.param_groups[0]["lr"]

        # 3. old log-probs, reference log-probs, values; KL-shaped rewards and GAE per stream
        with torch.no_grad(), record_function("advantages"):
            parts = []
            for chunk in split(torch.arange(len(prompts)), ro.mask, cfg.micro_batch_size):
                ids, attn = ro.ids[chunk.rows], ro.attn[chunk.rows]
                with amp():
                    old, _, hidden = forward_response(
                        policy, ids, attn, ro.prompt_len, dec, hidden=head_critic
                    )
                    if reference is not None:
                        ref, _, _ = forward_response(reference, ids, attn, ro.prompt_len, dec)
                    else:  # LoRA policy: the reference is the base model, adapters off
                        with policy.disable_adapter():  # type: ignore[operator]  # peft
                            ref, _, _ = forward_response(policy, ids, attn, ro.prompt_len, dec)
                # the value heads stay float32 (outside autocast): GAE subtracts values
                parts.append((old, ref, critic(ids, attn, ro.prompt_len, hidden)))
            old_logp = torch.cat([old for old, _, _ in parts])
            ref_logp = torch.cat([ref for _, ref, _ in parts])
            old_values = torch.cat([values for _, _, values in parts], 1)
            mask = ro.mask.to(old_logp.dtype)
            advantages, returns = [], []
            for s in range(len(plan.streams)):
                r = ppo.kl_shaped_rewards(stream_scores[s], old_logp, ref_logp, mask, cfg.beta)
                adv, ret = ppo.gae(r, old_values[s], mask, cfg.gamma, cfg.gae_lambda)
                advantages.append(adv)
                returns.append(ret)
            if cfg.whiten_advantages and mask.sum() > 1:
                advantages = [ppo.masked_whiten(a, mask) for a in advantages]
            if plan.losses == "lagrangian":
                advantages = [
                    ppo.lagrangian_advantages(
                        [advantages[i] for i in plan.reward_streams],
                        [advantages[j] for j in plan.cost_streams],
                        multipliers,
                    )
                ]

        # 4-5. PPO epochs over minibatches: per-objective policy losses through MOGD, critic.
        # train() only switches gradient checkpointing on (presets that use it); no dropout left
        policy.train()
        critic.train()

        def losses_of(
            chunk: MicroBatch,
            hiddens: list[torch.Tensor | None],
            sums: dict[str, float],
            ro: Rollout = ro,
            mask: torch.Tensor = mask,
            old_logp: torch.Tensor = old_logp,
            advantages: list[torch.Tensor] = advantages,
        ) -> list[torch.Tensor]:
            """The k PPO losses of one micro-batch (token means over its rows); its statistics
            go to ``sums`` weighted by its share of the tokens, its hidden states to ``hiddens``."""
            rows, w = chunk.rows, chunk.weight
            with amp():
                logp, logits, hidden = forward_response(
                    policy, ro.ids[rows], ro.attn[rows], ro.prompt_len, dec, head_critic
                )
            hiddens.append(hidden)
            entropy = ppo.entropy_from_logits(logits, mask[rows])
            weigh(sums, "entropy", w, entropy.item())
            losses = []
            for name, adv in zip(plan.loss_names, advantages, strict=True):
                loss, st = ppo.policy_loss(
                    logp, old_logp[rows], adv[rows], mask[rows], cfg.clip_eps
                )
                losses.append(loss - cfg.entropy_coef * entropy)
                weigh(sums, f"clip_frac/{name}", w, st.clip_fraction)
                weigh(sums, f"approx_kl/{name}", w, st.approx_kl)
                weigh(sums, f"policy_loss/{name}", w, loss.detach().item())
            return losses

        for epoch in range(cfg.ppo_epochs):
            order = torch.randperm(len(prompts))
            for lo in range(0, len(prompts), update_size):
                mb = order[lo : lo + update_size]
                # (not under FSDP2: autograd.grad on the shards sees no gradient, the forward
                # runs on gathered copies)
                signal = cfg.signal_every and not fsdp and step % cfg.signal_every == 0
                if signal and lo == epoch == 0:
                    # signal/<name>: cos of one objective's gradients on two halves of the batch
                    with record_function("signal"):
                        halves = functools.partial(losses_of, hiddens=[], sums={})
                        cosines = half_batch_cosines(halves, mb, trainable)
                    for name, c in zip(plan.loss_names, cosines, strict=True):
                        record(stats, f"signal/{name}", c)
                # micro-batches of --micro-batch-size sequences, each objective's gradient
                # accumulated over them (integrations/accumulate.py); statistics weighted alike
                chunks = split(mb, ro.mask, cfg.micro_batch_size)
                hiddens: list[torch.Tensor | None] = []
                sums: dict[str, float] = {}
                step_losses = functools.partial(losses_of, hiddens=hiddens, sums=sums)

                with record_function("policy_update"):
                    opt.zero_grad(set_to_none=True)
                    info = accumulate_objectives(opt, chunks, step_losses, probe=probe is not None)
                    sched.step()

                with record_function("critic"):
                    critic_opt.zero_grad(set_to_none=True)
                    for chunk, hidden in zip(chunks, hiddens, strict=True):
                        rows = chunk.rows
                        values = critic(ro.ids[rows], ro.attn[rows], ro.prompt_len, hidden)
                        v_losses = [
                            ppo.value_loss(
                                values[s],
                                old_values[s][rows],
                                returns[s][rows],
                                mask[rows],
                                cfg.clip_value,
                            )
                            for s in range(len(plan.streams))
                        ]
                        (chunk.weight * torch.stack(v_losses).sum()).backward()
                        for name, v in zip(plan.streams, v_losses, strict=True):
                            weigh(sums, f"value_loss/{name}", chunk.weight, v.item())
                    # FSDP2 reduced the sharded trunks' gradients; the replicated rest is averaged
                    replicated = [p for p in critic.parameters() if not is_sharded(p)]
                    all_reduce_grads(replicated, d)
                    if cfg.max_grad_norm is not None:
                        clip_grad_norm_(critic.parameters(), cfg.max_grad_norm)
                    critic_opt.step()
                for key, value in [*sums.items(), *info.as_dict(names=plan.loss_names).items()]:
                    record(stats, key, value)

        policy.eval()  # generation: KV cache on, checkpointing off
        critic.eval()

        # 6. metrics (rank 0 writes; statistics over all ranks' samples) and checkpoints
        with record_function("log"):
            seq_kl = ppo.sequence_kl(old_logp, ref_logp, mask).cpu()
            row = step_metrics(
                step,
                plan,
                scorers,
                gather_rows(raw, d),
                gather(seq_kl, d),
                gather(ro.mask.sum(-1).float().cpu(), d),
                stats,
                multipliers,
                lr,
                time.time() - t0,
            )
            if d.main:
                append_metrics(out, row)
                bar.set_postfix(progress_postfix(row, scorers), refresh=False)
            if (step + 1) % cfg.save_every == 0 or step + 1 == steps:
                save_checkpoint(
                    out,
                    cfg,
                    step + 1,
                    policy,
                    critic,
                    opt,
                    sched,
                    critic_opt,
                    lagrangians,
                    d,
                    reward_weights,
                )
    bar.close()

    if d.main and cfg.plots and steps > 0:
        plot_metrics(out)
    if cfg.eval_size != 0:  # every rank samples and scores its share; rank 0 writes
        result = evaluate_policy(setup, policy, cfg, cfg.eval_size)
        if d.main:
            write_eval(out / "eval.json", result)
    save_policy(out, setup, policy, d)  # last: a LoRA policy is merged in place
    barrier(d)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Train (or --dry-run) from the command line; 2 and a message naming the option on a bad
    configuration. ``mogd-rlhf`` also routes evaluate / sweep / compare (integrations/cli.py)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        print(
            f"rlhf_mistral.py: error: {argv[0]!r} is not an option; the subcommands run as "
            f"`python integrations/evaluate.py {argv[0]} ...` or `mogd-rlhf {argv[0]} ...`",
            file=sys.stderr,
        )
        return 2
    try:
        cfg = parse_config(argv)
        if cfg.dry_run:
            from .plan import dry_run  # the paper preset's modules, only when asked

            print(dry_run(cfg))
            return 0
        resume_state = open_run(cfg)
    except ValueError as err:
        print(f"rlhf_mistral.py: error: {err}", file=sys.stderr)
        return 2
    out = train(cfg, resume_state)
    close_distributed()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
