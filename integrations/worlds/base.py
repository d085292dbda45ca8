"""What a world gives the pipeline: the contract between the worlds and the loop.

A world (the tiny one: :func:`.tiny.setup.build_tiny_setup`; the paper's:
:func:`.paper.setup.build_paper_setup`) returns a :class:`Setup`; the loop and its parts only
talk to that object. This module imports nothing of the pipeline, so every layer may read it. Each objective of the multi-objective RLHF problem (paper App. B, Li et al. ACL
2025, arXiv 2507.01915) is one :class:`Scorer`: a helpfulness reward model R and a
harmlessness cost model C in the paper, any number of them here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Keyword arguments for every model ``from_pretrained`` of the pipeline. transformers >= 5.25 turns
# Hugging Face's hub kernels on by default (``use_kernels=None`` becomes True unless the environment
# says USE_HUB_KERNELS=NO), and a kernelized layer may fetch its kernel from the Hub: a run must
# never depend on the network, so the pipeline keeps the models' own torch layers.
LOCAL_MODEL_KWARGS: dict[str, Any] = {"use_kernels": False}


@runtime_checkable
class Scorer(Protocol):
    """One objective of the RLHF problem, scored on (request, response) pairs.

    ``kind == "reward"``: higher is better, the PPO reward at the last token is ``score``
    (the paper's R). ``kind == "cost"``: lower is better, the reward is ``-score`` (the
    paper's harmlessness reward -C, App. B).
    """

    name: str  # e.g. "helpful", "harmless"
    # reward: higher is better; cost: lower is better (objective = -cost)
    kind: Literal["reward", "cost"]

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Score a batch: float32 tensor ``[B]`` on CPU, one number per (prompt, response).

        ``prompts`` are the raw user requests (not chat-formatted), ``responses`` the generated
        answers (decoded, without the prompt). Batched, no autograd graph.
        """
        ...


@dataclass
class Setup:
    """Everything a preset provides to the training loop."""

    policy: PreTrainedModel  # causal LM to train (transformers), already on its device
    # frozen copy; None means "use policy with adapters disabled" (LoRA)
    reference: PreTrainedModel | None
    tokenizer: PreTrainedTokenizerBase  # left padding for generation; pad_token set
    scorers: list[Scorer]  # one per objective, in objective order
    train_prompts: list[str]  # raw user requests
    eval_prompts: list[str]  # held-out raw user requests
    format_prompt: Callable[[str], str]  # chat template: request -> model input text
    # {request: group} of held-out requests, for per-group evaluation (tiny: benign / harmful)
    categories: dict[str, str] = field(default_factory=dict)
    # Table 1's further held-out columns, {name: raw requests} (mistral-7b: HH-RLHF test)
    eval_sets: dict[str, list[str]] = field(default_factory=dict)
