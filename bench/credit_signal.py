"""Half-batch gradient cosines at the tiny SFT policy, per advantage estimator and parameter
space (all parameters vs the LM head, where the paper's App. B computes α).

    python bench/credit_signal.py [--halves 32 64] [--repeats 4] [--modes gae0 gaewarm group]

gae0: today's GAE (λ 0.95) with V = 0; gaewarm: GAE with the critic warmed up on SFT rollouts
(--critic-warmup); group: the leave-one-out group baseline over --samples-per-prompt samples.
Also prints the explained variance of the warmed critic and the share of truncated samples.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from integrations.ppo.advantages import explained_variance, stream_advantages  # noqa: E402
from integrations.ppo.critics import NoCritic, build_critic, disable_dropout  # noqa: E402
from integrations.ppo.gradient_signal import half_batch_cosines  # noqa: E402
from integrations.ppo.methods import make_plan  # noqa: E402
from integrations.ppo.rollout import (  # noqa: E402
    decoding,
    forward_response,
    generate,
    group_indices,
    objective_rewards,
    prompt_indices,
    score,
)
from integrations.ppo.surrogate import policy_loss  # noqa: E402
from integrations.run import presets  # noqa: E402
from integrations.run.learner import warm_up  # noqa: E402
from integrations.run.parse import make_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--halves", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--modes", nargs="+", default=["gae0", "gaewarm", "group"])
    ap.add_argument("--m", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--warmup", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for mode in args.modes:
        group = mode == "group"
        cfg = make_config(
            "tiny",
            advantage="group" if group else "gae",
            samples_per_prompt=args.m,
            max_new_tokens=args.max_new_tokens,
            critic_warmup=args.warmup if mode == "gaewarm" else 0,
            batch_size=max(args.halves) * 2 // 4,
        )
        torch.manual_seed(0)
        setup = presets.build_setup(cfg)
        scorers = presets.select_scorers(cfg, setup)
        plan = make_plan("gapo", scorers)
        policy = setup.policy
        disable_dropout(policy)
        kind = cfg.algorithm.critic_init
        critic = NoCritic(2) if group else build_critic(kind, policy, plan.streams, "cpu")
        if mode == "gaewarm":
            fit = warm_up(cfg, critic, setup, scorers, plan)
            print("warm-up", fit, flush=True)
        dec = decoding(cfg.rollout)
        head = list(policy.lm_head.parameters())
        full = [p for p in policy.parameters() if p.requires_grad]
        for half in args.halves:
            res: dict[str, list[float]] = {}
            for rep in range(args.repeats):
                t0 = time.time()
                idx = prompt_indices(rep, 2 * half // args.m, len(setup.train_prompts), 7, 0, 1)
                prompts = [setup.train_prompts[i] for i in group_indices(idx, args.m)]
                with torch.no_grad():
                    ro = generate(setup, policy, prompts, cfg.rollout)
                    raw = score(scorers, ro)
                    rewards = objective_rewards(scorers, raw)
                    old, _, hidden = forward_response(
                        policy, ro.ids, ro.attn, ro.prompt_len, dec, hidden=True
                    )
                    ref, _, _ = forward_response(
                        setup.reference, ro.ids, ro.attn, ro.prompt_len, dec
                    )
                    values = critic(ro.ids, ro.attn, ro.prompt_len, hidden)
                    mask = ro.mask.float()
                    m = cfg.batch.samples_per_prompt
                    adv, ret = stream_advantages(
                        plan, rewards, old, ref, values, mask, cfg.ppo, samples_per_prompt=m
                    )
                    ev = [
                        explained_variance(values[s], ret[s], mask) if not group else float("nan")
                        for s in range(len(ret))
                    ]
                lengths = ro.mask.sum(-1)
                res.setdefault("truncated", []).append(
                    float((lengths >= cfg.rollout.max_new_tokens).float().mean())
                )
                res.setdefault("length", []).append(float(lengths.float().mean()))
                for name, e in zip(plan.streams, ev, strict=True):
                    res.setdefault(f"ev/{name}", []).append(e)

                def losses_of(chunk, ro=ro, old=old, adv=adv, mask=mask, policy=policy, dec=dec):
                    r = chunk.rows
                    logp, _, _ = forward_response(policy, ro.ids[r], ro.attn[r], ro.prompt_len, dec)
                    return [policy_loss(logp, old[r], a[r], mask[r], 0.1)[0] for a in adv]

                # halves by whole groups: the first half of the prompts against the second
                rows = torch.arange(len(prompts))
                for space, params in (("full", full), ("lm_head", head)):
                    cos = half_batch_cosines(losses_of, rows, params)
                    for name, c in zip(plan.streams, cos, strict=True):
                        res.setdefault(f"{space}/{name}", []).append(c)
                print(f"  {mode} half={half} rep={rep} {time.time() - t0:.1f}s", flush=True)
            summary = {
                k: f"{statistics.mean(v):+.3f} ({min(v):+.3f}..{max(v):+.3f})"
                for k, v in res.items()
            }
            print(mode, "half", half, summary, flush=True)


if __name__ == "__main__":
    main()
