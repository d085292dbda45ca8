"""The critics: one value per reward stream for every response token (GAE's V_s).

Value losses must never reach the policy's per-objective gradients, which MOGD needs unmixed, so
every critic is either a separate network or reads the policy's hidden states detached (Safe RLHF
also keeps its reward and cost critics apart from the actor):

- ``copy`` (tiny, under ``--advantage gae``): a separate copy of the SFT trunk with one linear
  value head per stream;
- ``head`` (mistral-7b's morlhf and fast-rl): linear heads on the policy's detached last hidden
  state;
- ``score`` (mistral-7b default): one critic per objective initialised from its score model
  (Safe RLHF's choice); a cost model's critic is negated (:func:`reward_signed`): the stream's
  reward is −C.

``--advantage group`` (the tiny default) has no critic: :class:`NoCritic` (V = 0, nothing to
train).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel

from .options import CriticInit
from .sampling import positions


class Critic(nn.Module):
    """One value head per reward stream, V_s(state) = w_sᵀ h(state) + b_s.

    ``trunk`` is a separate transformer (a copy of the SFT policy's decoder); with ``trunk=None``
    the heads read the policy's last hidden state, detached so no value gradient reaches the
    policy (and MOGD's per-objective gradients stay pure policy gradients).
    """

    def __init__(self, trunk: nn.Module | None, hidden_size: int, streams: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = nn.Linear(hidden_size, streams)
        nn.init.zeros_(self.heads.weight)  # V = 0 at start: the first advantages are the returns
        nn.init.zeros_(self.heads.bias)

    def forward(
        self,
        ids: torch.Tensor,
        attn: torch.Tensor,
        prompt_len: int,
        policy_hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Values ``[streams, B, T]`` of the states that emit the response tokens."""
        if self.trunk is None:
            if policy_hidden is None:
                raise ValueError("critic='head' needs the policy's hidden states")
            h = policy_hidden.detach()
        else:
            h = self.trunk(
                input_ids=ids, attention_mask=attn, position_ids=positions(attn)
            ).last_hidden_state
            h = h[:, prompt_len - 1 : -1]
        return self.heads(h.float()).permute(2, 0, 1)


class ScoreCritics(nn.Module):
    """One critic per stream, each initialised from its objective's score model
    (``--critic-init score``; the paper world builds them: :func:`.build_critic`'s
    ``score_critics``)."""

    def __init__(self, critics: Sequence[nn.Module]) -> None:
        super().__init__()
        self.critics = nn.ModuleList(critics)

    def forward(
        self,
        ids: torch.Tensor,
        attn: torch.Tensor,
        prompt_len: int,
        policy_hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return torch.stack([c(ids, attn)[:, prompt_len - 1 : -1] for c in self.critics])


class NoCritic(nn.Module):
    """The critic of ``--advantage group``: no values (V = 0), nothing to train. One empty
    parameter keeps the critic optimizer and the checkpoint layout of the other modes."""

    def __init__(self, streams: int) -> None:
        super().__init__()
        self.streams = streams
        self.unused = nn.Parameter(torch.zeros(0))

    def forward(
        self,
        ids: torch.Tensor,
        attn: torch.Tensor,
        prompt_len: int,
        policy_hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        shape = (self.streams, ids.shape[0], ids.shape[1] - prompt_len)
        return torch.zeros(shape, device=ids.device)


def reward_signed(critic: nn.Module, kind: str) -> nn.Module:
    """A critic from a cost model predicts the cost C, but the harmlessness stream's return is
    −C (the stream maximises −C): negate its value head, so V starts at the stream's own score
    (Safe RLHF's cost critic predicts C for its cost stream; the sign here follows the stream)."""
    if kind == "cost":
        head = critic.value_head
        assert isinstance(head, nn.Linear)
        with torch.no_grad():
            head.weight.neg_()
            if head.bias is not None:
                head.bias.neg_()
    return critic


def build_critic(
    kind: CriticInit,
    policy: PreTrainedModel,
    streams: Sequence[str],
    device: str,
    score_critics: Mapping[str, nn.Module] | None = None,
) -> nn.Module:
    """The critic of ``--critic-init kind`` with one value per stream (in ``streams``' order).

    ``score``: ``score_critics`` holds one critic per objective name, initialised from its
    score model by the world (the paper's); ``copy`` and ``head`` are built from ``policy``.
    """
    if kind == "score":
        if score_critics is None or any(name not in score_critics for name in streams):
            raise ValueError(
                f"--critic-init score needs a critic per stream {list(streams)}; "
                f"the world built {list(score_critics or {})}"
            )
        critic: nn.Module = ScoreCritics([score_critics[name] for name in streams])
    else:
        trunk = None
        if kind == "copy":
            trunk = copy.deepcopy(policy.get_decoder())
            trunk.requires_grad_(True)
        critic = Critic(trunk, policy.config.hidden_size, len(streams)).to(device)
    disable_dropout(critic)
    return critic


def disable_dropout(model: nn.Module) -> None:
    """Zero every dropout (nn.Dropout and the attention dropout HF attention modules apply in
    training mode), so train() and eval() compute the same function, as Safe RLHF does."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            setattr(module, "attention_dropout", 0.0)  # noqa: B010 - an HF attribute, not a submodule
    model.eval()
