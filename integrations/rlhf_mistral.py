"""Multi-objective RLHF with PPO and mogd.MOGD: the training loop of the GAPO paper, App. B.

    python integrations/rlhf_mistral.py --preset tiny --method gapo --p 1 --seed 0 --out runs/x
    python integrations/rlhf_mistral.py --resume runs/x          # continue exactly where it stopped
    python integrations/rlhf_mistral.py --preset mistral-7b --dry-run --json   # config + memory plan
    python integrations/rlhf_mistral.py --help                    # every option with its defaults
    torchrun --nproc_per_node 8 integrations/rlhf_mistral.py --preset mistral-7b   # FSDP2, 8 GPUs

:func:`train` builds the run (models, optimizers: integrations/run/learner.py) and then repeats
one PPO iteration ("step"):
  1-2. :func:`collect`: sample --samples-per-prompt responses per prompt from the policy and
       score them with every objective's scorer (reward R, or cost C -> reward -C);
  3.   :func:`advantages`: per-token KL shaping r̂_t = r_t − β(log π − log π_ref) in every stream,
       GAE with one critic value per stream, or (--advantage group, no critic) the score minus
       the leave-one-out mean of the prompt's other samples (integrations/ppo/advantages.py);
  4-5. :func:`update`: one clipped PPO surrogate per objective; the policy update goes through
       mogd.MOGD, which turns the per-objective gradients into one direction (GAPO / MGDA /
       P-GAPO weights), each objective's gradient accumulated over --micro-batch-size
       micro-batches; the critics regress the GAE returns (separate optimizer; none in group
       mode);
  6.   :func:`log_step`: one metrics row; a checkpoint every --save-every iterations.
At the end (:func:`finish`): plots, the held-out evaluation and the trained policy.

Methods (--method, integrations/ppo/methods.py): gapo, mgda, pgapo, morlhf, fast-rl, ppo-h, ppo-s,
safe-rlhf. Options, in sections: integrations/run/config.py; precision and FSDP2 sharding:
integrations/run/sharding.py. Outputs in --out: config.json, metrics.jsonl, checkpoints/ (sharded
DCP, integrations/run/checkpoint.py), plots.png, eval.json and policy/ (Hugging Face format;
integrations/run/runio.py).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
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

from mogd.distributed import is_sharded

from .ppo.accumulate import MicroBatch, accumulate_objectives, split
from .ppo.advantages import explained_variance, sequence_kl, stream_advantages
from .ppo.gradient_signal import half_batch_cosines
from .ppo.rollout import (
    Rollout,
    forward_response,
    generate,
    group_indices,
    objective_rewards,
    prompt_indices,
    score,
)
from .ppo.surrogate import entropy_from_logits, policy_loss, value_loss
from .run import presets
from .run.config import Config, config_hash, total_steps
from .run.dist import (
    all_reduce_grads,
    barrier,
    close_distributed,
    gather,
    gather_rows,
    init_distributed,
    on_main,
    resolve_device,
    seed_everything,
)
from .run.heldout import evaluate_policy
from .run.learner import Learner, build_learner
from .run.parse import parse_config
from .run.runio import (
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
from .run.sharding import clip_grad_norm_, gathered
from .run.validate import validate


@dataclass
class Batch:
    """One iteration's rollout: the prompts, the sampled responses and their scores."""

    prompts: list[str]
    ro: Rollout
    raw: torch.Tensor  # [K, B] each scorer's own number (R or C)
    stream_scores: torch.Tensor  # [S, B] the sequence score of each critic stream
    multipliers: list[float]  # safe-rlhf's λ for this iteration's update
    lr: float  # the policy's learning rate at the iteration's first update


@dataclass
class Advantages:
    """The old policy's and the reference's log-probs, the old values, and per loss/stream the
    advantages and returns of one batch (all ``[B, T]``, values ``[S, B, T]``)."""

    old_logp: torch.Tensor
    ref_logp: torch.Tensor
    old_values: torch.Tensor
    mask: torch.Tensor
    advantages: list[torch.Tensor]
    returns: list[torch.Tensor]
    explained: list[float]  # per stream, the critic's explained variance (none in group mode)


def train(cfg: Config, resume_state: dict[str, Any] | None = None) -> Path:
    """Train one run; returns its directory (config.json, metrics.jsonl, checkpoints/, ...).

    ``resume_state``: what :func:`integrations.run.runio.open_run` returned (called if not given).
    """
    validate(cfg)
    if resume_state is None:
        resume_state = open_run(cfg)
    from tqdm.auto import tqdm

    device = resolve_device(cfg.engine.device)
    d = init_distributed(device)
    out = Path(str(cfg.run.out))

    def open_out() -> None:
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.run.resume:
            write_config(out, cfg)

    on_main(open_out)  # rank 0 alone writes; its failure stops every rank (run/dist.py)
    seed_everything(cfg.run.seed)  # the same initial weights on every rank
    setup = presets.build_setup(cfg)
    steps = total_steps(cfg.batch, len(setup.train_prompts), d.world)
    learner = build_learner(cfg, setup, steps, d, device)

    start = 0
    if resume_state is not None:
        start = resume_state["step"]
        restore(resume_state, **learner.state(), d=d)
        on_main(lambda: truncate_metrics(out / "metrics.jsonl", start))
    else:
        torch.manual_seed(cfg.run.seed + 1000 * d.rank)  # each rank samples different responses

    bar = tqdm(
        range(start, steps),
        initial=start,
        total=steps,
        disable=not (cfg.run.progress and d.main),
        desc=cfg.algorithm.method,
        dynamic_ncols=True,
    )
    for step in bar:
        t0 = time.time()
        stats: dict[str, list[float]] = {}  # per-iteration means go to metrics.jsonl
        batch = collect(cfg, learner, step, stats)
        adv = advantages(cfg, learner, batch)
        update(cfg, learner, batch, adv, step, stats)
        row = log_step(learner, batch, adv, step, stats, time.time() - t0)
        on_main(functools.partial(append_metrics, out, row))
        if d.main:
            bar.set_postfix(progress_postfix(row, learner.scorers), refresh=False)
        if (step + 1) % cfg.run.save_every == 0 or step + 1 == steps:
            save_checkpoint(out, config_hash(cfg), step + 1, **learner.state(), d=d)
    bar.close()
    finish(cfg, learner, out, steps)
    return out


def collect(cfg: Config, learner: Learner, step: int, stats: dict[str, list[float]]) -> Batch:
    """1-2. This rank's prompts of iteration ``step``, --samples-per-prompt sampled responses
    each (consecutive rows), their scores; fast-rl's weights and safe-rlhf's multipliers take
    their step before the update uses them."""
    setup, plan, policy, d = learner.setup, learner.plan, learner.policy, learner.d
    n = len(setup.train_prompts)
    b = cfg.batch
    indices = prompt_indices(step, b.prompts_per_iteration, n, cfg.run.seed, d.rank, d.world)
    indices = group_indices(indices, b.samples_per_prompt)
    prompts = [setup.train_prompts[i] for i in indices]
    with record_function("rollout"), gathered(policy), learner.amp():
        ro = generate(setup, policy, prompts, cfg.rollout)  # FSDP2: one all-gather per batch
    with record_function("score"):
        raw = score(learner.scorers, ro)  # [K, B]
        clip = cfg.ppo.score_clip
        rewards = objective_rewards(learner.scorers, raw).clamp(-clip, clip)
        if learner.reward_weights is not None:  # Li et al.: the weights step, then the policy
            means = torch.stack([gather(r, d).mean() for r in rewards])
            plan.mix = learner.reward_weights.update(means).float()[None, :]
            weights = learner.reward_weights.weights.tolist()
            for scorer, w in zip(learner.scorers, weights, strict=True):
                record(stats, f"reward_weight/{scorer.name}", w)
        stream_scores = (plan.mix @ rewards).to(learner.device)  # [S, B]
    # safe-rlhf: the dual step on each constraint's moving mean cost, before the update that
    # uses λ (Safe RLHF's order: record this batch's episode costs, step λ, then PPO)
    for lag, j in zip(learner.lagrangians, plan.cost_streams, strict=True):
        lag.record(gather(raw[j], d))
        lag.update(step)
    multipliers = [lag.value for lag in learner.lagrangians]
    lr = learner.opt.param_groups[0]["lr"]
    return Batch(prompts, ro, raw, stream_scores, multipliers, lr)


@torch.no_grad()
def advantages(cfg: Config, learner: Learner, batch: Batch) -> Advantages:
    """3. Old and reference log-probs and old values, forwarded in micro-batches; the KL-shaped
    rewards, GAE and advantages of every stream (:func:`~.ppo.advantages.stream_advantages`)."""
    ro, policy, dec = batch.ro, learner.policy, learner.dec
    rows, width = ro.mask.shape
    old_logp = torch.zeros(rows, width, device=ro.mask.device)
    ref_logp = torch.zeros_like(old_logp)
    old_values = torch.zeros(len(learner.plan.streams), rows, width, device=ro.mask.device)
    with record_function("advantages"):
        prompts = ro.attn[:, : ro.prompt_len]
        for chunk in split(torch.arange(rows), ro.mask, cfg.batch.micro_batch_size, prompts):
            ids, attn, prompt_len = chunk.inputs(ro.ids, ro.attn, ro.prompt_len)
            with learner.amp():
                old, _, hidden = forward_response(
                    policy, ids, attn, prompt_len, dec, hidden=learner.head_critic
                )
                if learner.reference is not None:
                    ref, _, _ = forward_response(learner.reference, ids, attn, prompt_len, dec)
                else:  # LoRA policy: the reference is the base model, adapters off
                    with policy.disable_adapter():  # peft
                        ref, _, _ = forward_response(policy, ids, attn, prompt_len, dec)
            chunk.place(old_logp, old)
            chunk.place(ref_logp, ref)
            # the value heads stay float32 (outside autocast): GAE subtracts values
            chunk.place(old_values, learner.critic(ids, attn, prompt_len, hidden))
        mask = ro.mask.to(old_logp.dtype)
        scores, multipliers = batch.stream_scores, batch.multipliers
        adv, ret = stream_advantages(
            learner.plan,
            scores,
            old_logp,
            ref_logp,
            old_values,
            mask,
            cfg.ppo,
            multipliers,
            samples_per_prompt=cfg.batch.samples_per_prompt,
        )
        explained = []
        if cfg.ppo.advantage == "gae":  # how well the old values predicted the returns
            explained = [explained_variance(old_values[s], ret[s], mask) for s in range(len(ret))]
    return Advantages(old_logp, ref_logp, old_values, mask, adv, ret, explained)


def update(
    cfg: Config,
    learner: Learner,
    batch: Batch,
    adv: Advantages,
    step: int,
    stats: dict[str, list[float]],
) -> None:
    """4-5. --ppo-epochs passes over the batch in update batches: per-objective policy losses
    through MOGD, each objective's gradient accumulated over the micro-batches
    (integrations/ppo/accumulate.py), then the critics; statistics weighted alike."""
    ro, policy, critic, plan, ppo = batch.ro, learner.policy, learner.critic, learner.plan, cfg.ppo
    mask = adv.mask
    prompts = ro.attn[:, : ro.prompt_len]  # what split trims each micro-batch's padding by

    def losses_of(
        chunk: MicroBatch, hiddens: list[torch.Tensor | None], sums: dict[str, float]
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The k PPO losses of one micro-batch (token means over its rows) and the entropy bonus
        R = −coef·H they share, MOGD's regularizer (None at coefficient 0: no entropy graph); its
        statistics go to ``sums`` weighted by its share of the tokens, its hidden states to
        ``hiddens``."""
        w, m = chunk.weight, chunk.cut(mask)
        with learner.amp():
            logp, logits, hidden = forward_response(
                policy,
                *chunk.inputs(ro.ids, ro.attn, ro.prompt_len),
                learner.dec,
                learner.head_critic,
            )
        hiddens.append(hidden)
        bonus = ppo.entropy_coef != 0.0
        entropy = entropy_from_logits(logits if bonus else logits.detach(), m)
        weigh(sums, "entropy", w, entropy.item())
        losses = []
        for name, a in zip(plan.loss_names, adv.advantages, strict=True):
            loss, st = policy_loss(logp, chunk.cut(adv.old_logp), chunk.cut(a), m, ppo.clip_eps)
            losses.append(loss)
            weigh(sums, f"clip_frac/{name}", w, st.clip_fraction)
            weigh(sums, f"approx_kl/{name}", w, st.approx_kl)
            weigh(sums, f"policy_loss/{name}", w, loss.detach().item())
        return losses, -ppo.entropy_coef * entropy if bonus else None

    # train() only switches gradient checkpointing on (presets that use it); no dropout left
    policy.train()
    critic.train()
    size, every = cfg.batch.update_size, cfg.eval.signal_every
    for epoch in range(cfg.batch.ppo_epochs):
        order = torch.randperm(len(batch.prompts))
        for lo in range(0, len(batch.prompts), size):
            mb = order[lo : lo + size]
            # signal/<name>: cos of one objective's gradients on two halves of the batch (not
            # under FSDP2: autograd.grad on the shards sees no gradient, the forward runs on
            # gathered copies)
            if every and not learner.fsdp and step % every == 0 and lo == epoch == 0:
                with record_function("signal"):

                    def halves(chunk: MicroBatch) -> list[torch.Tensor]:
                        return losses_of(chunk, hiddens=[], sums={})[0]  # objectives, not R

                    # in the Gram's parameter space: the probe's, or every parameter
                    module = learner.probe
                    space = learner.trainable if module is None else list(module.parameters())
                    cosines = half_batch_cosines(halves, mb, space)
                for name, c in zip(plan.loss_names, cosines, strict=True):
                    record(stats, f"signal/{name}", c)
            chunks = split(mb, ro.mask, cfg.batch.micro_batch_size, prompts)
            hiddens: list[torch.Tensor | None] = []
            sums: dict[str, float] = {}
            step_losses = functools.partial(losses_of, hiddens=hiddens, sums=sums)
            with record_function("policy_update"):
                learner.opt.zero_grad(set_to_none=True)
                probe = learner.probe is not None
                info = accumulate_objectives(learner.opt, chunks, step_losses, probe=probe)
                learner.sched.step()
            if cfg.ppo.advantage == "gae":  # group mode has no critic to train
                with record_function("critic"):
                    update_critic(cfg, learner, batch, adv, chunks, hiddens, sums)
            for key, value in [*sums.items(), *info.as_dict(names=plan.loss_names).items()]:
                record(stats, key, value)
    policy.eval()  # generation: KV cache on, checkpointing off
    critic.eval()


def update_critic(
    cfg: Config,
    learner: Learner,
    batch: Batch,
    adv: Advantages,
    chunks: list[MicroBatch],
    hiddens: list[torch.Tensor | None],
    sums: dict[str, float],
) -> None:
    """5. One step of the critics on an update batch: each stream's clipped value loss against
    its GAE returns, accumulated over the micro-batches the policy update forwarded."""
    ro, critic, streams = batch.ro, learner.critic, learner.plan.streams
    learner.critic_opt.zero_grad(set_to_none=True)
    for chunk, hidden in zip(chunks, hiddens, strict=True):
        values = critic(*chunk.inputs(ro.ids, ro.attn, ro.prompt_len), hidden)
        v_losses = [
            value_loss(
                values[s],
                chunk.cut(adv.old_values[s]),
                chunk.cut(adv.returns[s]),
                chunk.cut(adv.mask),
                cfg.ppo.clip_value,
            )
            for s in range(len(streams))
        ]
        (chunk.weight * torch.stack(v_losses).sum()).backward()
        for name, v in zip(streams, v_losses, strict=True):
            weigh(sums, f"value_loss/{name}", chunk.weight, v.item())
    # FSDP2 reduced the sharded trunks' gradients; the replicated rest is averaged
    all_reduce_grads([p for p in critic.parameters() if not is_sharded(p)], learner.d)
    if cfg.optim.max_grad_norm is not None:
        clip_grad_norm_(critic.parameters(), cfg.optim.max_grad_norm)
    learner.critic_opt.step()


def log_step(
    learner: Learner,
    batch: Batch,
    adv: Advantages,
    step: int,
    stats: dict[str, list[float]],
    seconds: float,
) -> dict[str, Any]:
    """6. The iteration's metrics row (statistics over all ranks' samples)."""
    d = learner.d
    for name, ev in zip(learner.plan.streams, adv.explained, strict=False):
        record(stats, f"critic/{name}/explained_variance", ev)
    with record_function("log"):
        seq_kl = sequence_kl(adv.old_logp, adv.ref_logp, adv.mask).cpu()
        return step_metrics(
            step,
            learner.plan,
            learner.scorers,
            gather_rows(batch.raw, d),
            gather(seq_kl, d),
            gather(batch.ro.mask.sum(-1).float().cpu(), d),
            stats,
            batch.multipliers,
            batch.lr,
            seconds,
        )


def finish(cfg: Config, learner: Learner, out: Path, steps: int) -> None:
    """plots.png, the held-out evaluation (every rank samples and scores its share; rank 0 writes
    eval.json) and policy/ (last: a LoRA policy is merged in place)."""
    d = learner.d
    if cfg.run.plots and steps > 0:
        on_main(lambda: plot_metrics(out))
    if cfg.eval.eval_size != 0:
        result = evaluate_policy(
            learner.setup,
            learner.policy,
            learner.scorers,
            cfg.rollout,
            samples=cfg.eval.eval_samples,
            batch=cfg.batch.rollout_size,
            n_prompts=cfg.eval.eval_size,
        )
        on_main(lambda: write_eval(out / "eval.json", result))
    save_policy(out, learner.setup, learner.policy, d)  # rank 0 writes, every rank learns how
    barrier(d)


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
        if cfg.run.dry_run:
            from .run.dry_run import dry_run  # the paper world's modules, only when asked

            print(dry_run(cfg))
            return 0
        resume_state = open_run(cfg)
    except ValueError as err:
        print(f"rlhf_mistral.py: error: {err}", file=sys.stderr)
        return 2
    try:
        out = train(cfg, resume_state)
    finally:  # also after a failure every rank was told of: leave the group, exit non-zero
        close_distributed()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
