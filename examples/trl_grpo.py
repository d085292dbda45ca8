"""GRPO + GAPO with TRL: the tiny world's policy trained on its two scorers as TRL reward functions.

    python examples/trl_grpo.py                                  # tiny SFT policy, GAPO(p=1), CPU
    python examples/trl_grpo.py --weighting pgapo --preference 0.7 0.3
    python examples/trl_grpo.py --weighting linear               # the weighted-sum baseline
    python examples/trl_grpo.py --probe lm_head                  # weights from the LM head only
    python examples/trl_grpo.py --model path/to/small-causal-lm  # any local Hugging Face model
    accelerate launch --num_processes 2 examples/trl_grpo.py     # DDP (or FSDP2) via accelerate

The objectives are the tiny world's (``integrations/scorers.py``): helpfulness R(request, answer) and
the harmlessness cost C(answer), which enters TRL as the reward -C (paper App. B's convention). Each
reward function is one objective of ``MOGDGRPOTrainer``: it gets its own group-normalised advantages
and GRPO loss, and MOGD weights the two policy gradients (GAPO: Li et al., ACL 2025, arXiv
2507.01915). The log lines carry TRL's ``rewards/<name>/mean`` next to ``mogd/weight/<name>``,
``mogd/norm/<name>`` and ``mogd/cosine/helpful/harmless``. The first run builds the tiny SFT policy
(cached under ``--cache-dir``, about a minute); then a run takes a few minutes on a CPU.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import trl
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

import mogd

try:
    from mogd.integrations import scorers, tiny
    from mogd.integrations.common import Scorer
    from mogd.integrations.trl import MOGDGRPOTrainer
except (
    ImportError
):  # a checkout not installed with `pip install -e .`: integrations/ is at its root
    sys.path.append(str(Path(__file__).resolve().parents[1]))
    from integrations import scorers, tiny
    from integrations.common import Scorer
    from integrations.trl import MOGDGRPOTrainer


def reward_function(scorer: Scorer) -> Callable[..., list[float]]:
    """A TRL reward function from a tiny-world scorer: R as is, a cost C as the reward -C."""
    sign = -1.0 if scorer.kind == "cost" else 1.0

    def reward(completions: list[str], request: list[str], **kwargs: object) -> list[float]:
        # TRL passes the dataset's extra columns: `request` is the raw user request the scorers read
        return (sign * scorer.score(request, [c.strip() for c in completions])).tolist()

    reward.__name__ = scorer.name  # TRL's log keys: rewards/<name>/mean, mogd/weight/<name>
    return reward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="local model path (default: tiny SFT policy)")
    parser.add_argument("--weighting", choices=("gapo", "mgda", "pgapo", "linear"), default="gapo")
    parser.add_argument("--p", type=float, default=1.0, help="GAPO's p (1 or 2 in the paper)")
    parser.add_argument(
        "--preference", type=float, nargs=2, default=(0.5, 0.5), help="pgapo/linear weights"
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--generations", type=int, default=4, help="GRPO group size")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.05, help="KL coefficient (paper: 0.05)")
    parser.add_argument("--epsilon", type=float, default=0.1, help="ratio clip (paper: 0.1)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="clip of the direction")
    parser.add_argument("--probe", default=None, help="probe module, e.g. lm_head (default: full)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default="~/.cache/mogd", help="tiny policy cache")
    parser.add_argument("--out", default="runs/trl-grpo")
    args = parser.parse_args()

    # -- policy and tokenizer: the tiny world's SFT model, or any small causal LM on disk
    if args.model is None:
        setup = tiny.build_tiny_setup(Path(args.cache_dir).expanduser(), seed=args.seed)
        model, tokenizer = setup.policy, setup.tokenizer
        objectives = setup.scorers
    else:
        model = AutoModelForCausalLM.from_pretrained(
            args.model, dtype=torch.float32, use_kernels=False
        )
        tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        objectives = [scorers.EmbeddingHelpfulness(), scorers.OffensiveLanguageCost()]

    # -- prompts: the tiny world's RL requests, in its chat format
    requests = tiny.rl_prompts(tiny.load_corpus("train"))
    dataset = Dataset.from_dict(
        {"prompt": [tiny.format_prompt(r) for r in requests], "request": requests}
    )

    # -- the weighting: reward_weights are P-GAPO's preference, or Linear's weights
    weighting: mogd.Weighting | type[mogd.PGAPO] | type[mogd.Linear]
    reward_weights = None
    if args.weighting == "gapo":
        weighting = mogd.GAPO(p=args.p)
    elif args.weighting == "mgda":
        weighting = mogd.MGDA()
    else:
        weighting = mogd.PGAPO if args.weighting == "pgapo" else mogd.Linear
        reward_weights = list(args.preference)

    config = trl.GRPOConfig(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=args.prompts_per_step * args.generations,
        num_generations=args.generations,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        beta=args.beta,
        epsilon=args.epsilon,
        max_grad_norm=args.max_grad_norm,
        reward_weights=reward_weights,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = MOGDGRPOTrainer(
        model=model,
        reward_funcs=[reward_function(s) for s in objectives],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        weighting=weighting,
        probe=args.probe,
    )
    trainer.train()
    trainer.save_model(args.out)

    if trainer.accelerator.is_main_process:
        names = trainer.objective_names
        first = next(r for r in trainer.state.log_history if f"rewards/{names[0]}/mean" in r)
        last = [r for r in trainer.state.log_history if f"rewards/{names[0]}/mean" in r][-1]
        print(f"\n{'objective':<12}{'first log':>12}{'last log':>12}{'last weight':>14}")
        for name in names:
            print(
                f"{name:<12}{first[f'rewards/{name}/mean']:>12.3f}{last[f'rewards/{name}/mean']:>12.3f}"
                f"{last.get(f'mogd/weight/{name}', float('nan')):>14.4f}"
            )
        print(f"policy saved to {args.out}")


if __name__ == "__main__":
    main()
