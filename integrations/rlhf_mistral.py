"""Multi-objective RLHF with PPO and mogd.MOGD: the training loop of the GAPO paper, App. B.

    python integrations/rlhf_mistral.py --preset tiny --method gapo --p 1 --seed 0 --out runs/x
    python integrations/rlhf_mistral.py --resume runs/x          # continue exactly where it stopped
    python integrations/rlhf_mistral.py --preset mistral-7b --dry-run --json   # config + memory plan
    python integrations/rlhf_mistral.py --help                    # every option with its defaults

One PPO iteration ("step"):
  1. rollout: sample one response per prompt from the policy;
  2. score every response with every objective's scorer (reward R, or cost C -> reward -C);
  3. per-token KL shaping r̂_t = r_t − β(log π − log π_ref) in every stream, GAE with one critic
     value per stream (integrations/ppo.py);
  4. one clipped PPO surrogate per objective; the policy update goes through mogd.MOGD, which
     turns the per-objective gradients into one direction (GAPO / MGDA / P-GAPO weights);
  5. the critics regress the GAE returns (separate optimizer);
  6. log one metrics row, checkpoint every --save-every iterations.

Methods (--method, integrations/methods.py): gapo, mgda, pgapo, morlhf, ppo-h, ppo-s, safe-rlhf.
Options and presets: integrations/config.py. Outputs in --out: config.json, metrics.jsonl,
checkpoint.pt, plots.png, eval.json and policy/ (Hugging Face format; integrations/runio.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:
    # `python integrations/rlhf_mistral.py`: Python put integrations/ first on sys.path, where
    # trl.py would shadow the TRL package; import the package from the checkout instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    __package__ = "integrations"

import torch
from torch.profiler import record_function

import mogd

from . import ppo, presets
from .config import Config, parse_config, total_steps, validate
from .critics import build_critic, disable_dropout
from .dist import (
    all_reduce_grads,
    barrier,
    gather,
    gather_rows,
    init_distributed,
    process_group,
    resolve_device,
    seed_everything,
)
from .heldout import evaluate_policy
from .methods import make_plan
from .rollout import forward_response, generate, objective_rewards, prompt_indices, score
from .runio import (
    append_metrics,
    open_run,
    plot_metrics,
    progress_postfix,
    restore,
    save_checkpoint,
    save_policy,
    step_metrics,
    truncate_metrics,
    write_config,
    write_eval,
)


def train(cfg: Config, resume_state: dict[str, Any] | None = None) -> Path:
    """Train one run; returns its directory (config.json, metrics.jsonl, checkpoint.pt, ...).

    ``resume_state``: what :func:`integrations.runio.open_run` returned (called here if not given).
    """
    validate(cfg)
    if resume_state is None:
        resume_state = open_run(cfg)
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

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
    probe = None if cfg.probe == "full" else find_module(policy, cfg.probe)

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
        process_group=process_group(d),
    )
    total_updates = steps * cfg.ppo_epochs * math.ceil(rollout_size / update_size)
    sched = get_cosine_schedule_with_warmup(
        opt, round(cfg.warmup_ratio * total_updates), total_updates
    )
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

    start = 0
    if resume_state is not None:
        start = resume_state["step"]
        restore(resume_state, policy, critic, opt, sched, critic_opt, lagrangians, d)
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
        n = len(setup.train_prompts)
        indices = prompt_indices(step, rollout_size, n, cfg.seed, d.rank, d.world)
        prompts = [setup.train_prompts[i] for i in indices]

        # 1-2. rollout and scores
        with record_function("rollout"):
            ro = generate(setup, policy, prompts, cfg)
        with record_function("score"):
            raw = score(scorers, ro)  # [K, B]
            rewards = objective_rewards(scorers, raw).clamp(-cfg.score_clip, cfg.score_clip)
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
            old_logp, _, hidden = forward_response(
                policy, ro.ids, ro.attn, ro.prompt_len, cfg.temperature, hidden=head_critic
            )
            if reference is not None:
                ref_logp, _, _ = forward_response(
                    reference, ro.ids, ro.attn, ro.prompt_len, cfg.temperature
                )
            else:  # LoRA policy: the reference is the base model, adapters off
                with policy.disable_adapter():  # type: ignore[operator]  # a peft model
                    ref_logp, _, _ = forward_response(
                        policy, ro.ids, ro.attn, ro.prompt_len, cfg.temperature
                    )
            old_values = critic(ro.ids, ro.attn, ro.prompt_len, hidden)
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
        stats: dict[str, list[float]] = {}
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(prompts))
            for lo in range(0, len(prompts), update_size):
                mb = order[lo : lo + update_size]
                with record_function("policy_update"):
                    logp, logits, hidden = forward_response(
                        policy,
                        ro.ids[mb],
                        ro.attn[mb],
                        ro.prompt_len,
                        cfg.temperature,
                        hidden=head_critic,
                    )
                    entropy = ppo.entropy_from_logits(logits, mask[mb])
                    losses = []
                    for i, adv in enumerate(advantages):
                        loss, st = ppo.policy_loss(
                            logp, old_logp[mb], adv[mb], mask[mb], cfg.clip_eps
                        )
                        losses.append(loss - cfg.entropy_coef * entropy)
                        name = plan.loss_names[i]
                        add(stats, f"clip_frac/{name}", st.clip_fraction)
                        add(stats, f"approx_kl/{name}", st.approx_kl)
                        add(stats, f"policy_loss/{name}", loss.detach().item())
                    opt.zero_grad(set_to_none=True)
                    info = opt.step(losses)
                    sched.step()
                add(stats, "entropy", entropy.item())
                for key, value in info.as_dict(names=plan.loss_names).items():
                    add(stats, key, value)

                with record_function("critic"):
                    values = critic(ro.ids[mb], ro.attn[mb], ro.prompt_len, hidden)
                    v_losses = [
                        ppo.value_loss(
                            values[s], old_values[s][mb], returns[s][mb], mask[mb], cfg.clip_value
                        )
                        for s in range(len(plan.streams))
                    ]
                    critic_opt.zero_grad(set_to_none=True)
                    torch.stack(v_losses).sum().backward()
                    all_reduce_grads(critic.parameters(), d)
                    if cfg.max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.max_grad_norm)
                    critic_opt.step()
                for s, v in enumerate(v_losses):
                    add(stats, f"value_loss/{plan.streams[s]}", v.item())

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
                    out, cfg, step + 1, policy, critic, opt, sched, critic_opt, lagrangians, d
                )
    bar.close()

    if d.main:
        if cfg.plots and steps > 0:
            plot_metrics(out)
        if cfg.eval_size != 0:
            write_eval(out / "eval.json", evaluate_policy(setup, policy, cfg, cfg.eval_size))
        save_policy(out, setup, policy)  # last: a LoRA policy is merged in place
    barrier(d)
    return out


def add(stats: dict[str, list[float]], key: str, value: float) -> None:
    stats.setdefault(key, []).append(value)


def find_module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The policy's submodule ``name`` (MOGD's probe)."""
    modules = dict(model.named_modules())
    if name not in modules:
        close = [n for n in modules if n.endswith(name.split(".")[-1])][:5]
        raise ValueError(
            f"--probe {name}: no such module in the policy (e.g. {close or 'lm_head'}, or full)"
        )
    return modules[name]


def dry_run(cfg: Config) -> str:
    """What --dry-run prints: the preset's parameter counts and memory plan, no weights loaded;
    with --json one object {"config": every Config field, "plan": ...}."""
    from .plan import dry_run_plan, format_plan

    plan = dry_run_plan(cfg)
    if cfg.json:
        return json.dumps({"config": dataclasses.asdict(cfg), "plan": plan}, indent=2)
    if cfg.preset == "tiny":  # the tiny preset's plan is its configuration
        return json.dumps(dataclasses.asdict(cfg), indent=2)
    return format_plan(plan)


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
            print(dry_run(cfg))
            return 0
        resume_state = open_run(cfg)
    except ValueError as err:
        print(f"rlhf_mistral.py: error: {err}", file=sys.stderr)
        return 2
    out = train(cfg, resume_state)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
