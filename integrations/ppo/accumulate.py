"""Gradient accumulation over micro-batches for every objective (``--micro-batch-size``).

An update batch of B sequences is forwarded in micro-batches of at most ``--micro-batch-size``
sequences, so activation memory is bounded by the micro-batch, not by B. The PPO losses are
means over the batch's response tokens, L = Σ_t ℓ_t / N, so the loss of the whole batch is the
token-weighted sum of the micro-batches' own means: L = Σ_c (N_c / N) L_c. Each objective's
gradient of the batch is therefore accumulated in MOGD's bank, one backward per objective and
micro-batch inside ``opt.objective(i)`` with the loss scaled by N_c / N, and one ``opt.step()``
takes the Gram of the accumulated gradients: the same step as one forward of all B sequences.

A micro-batch is forwarded over the columns its own rows use: the left padding all of its
prompts share (but one column, which the repetition penalty sees) and the response positions
past its longest response are cut off (positions come from the attention mask and attention is
causal, so no kept position changes), and a batch of short answers does not pay for the
rollout's longest one.

The entropy bonus is a regularizer R every objective shares: its gradient is accumulated the same
way inside ``opt.regularizer()`` and MOGD adds it to the update outside the weighting,
d = Σ_i w_i g_i + ∇R, so the bonus neither takes an objective's share nor counts k times.

Probe mode takes the k losses of the whole batch in one ``opt.step(losses)`` (the probe's
gradients, then one weighted backward), so it cannot accumulate: it needs one micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.profiler import record_function

__all__ = ["MicroBatch", "accumulate_objectives", "split"]


@dataclass(frozen=True)
class MicroBatch:
    """Rows of one forward pass, their share N_c / N of the update batch's response tokens, and
    the columns they use: prompt columns from ``start`` on, ``width`` response tokens (None:
    all of them)."""

    rows: torch.Tensor
    weight: float
    start: int = 0
    width: int | None = None

    def inputs(
        self, ids: torch.Tensor, attn: torch.Tensor, prompt_len: int
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The micro-batch's ``ids``, ``attn`` (``[B, prompt_len + T]``) and prompt length."""
        cols = slice(self.start, None if self.width is None else prompt_len + self.width)
        return ids[self.rows, cols], attn[self.rows, cols], prompt_len - self.start

    def cut(self, x: torch.Tensor) -> torch.Tensor:
        """Its part ``[..., b, width]`` of a per-token tensor ``[..., B, T]``."""
        return x[..., self.rows, : self.width]

    def place(self, into: torch.Tensor, x: torch.Tensor) -> None:
        """Write its part ``x`` (``[..., b, width]``) back into ``into`` (``[..., B, T]``)."""
        into[..., self.rows, : self.width] = x


def split(
    rows: torch.Tensor,
    mask: torch.Tensor,
    size: int | None,
    prompt_attn: torch.Tensor | None = None,
) -> list[MicroBatch]:
    """Cut the update batch ``rows`` (indices into ``mask``'s rows) into micro-batches of at most
    ``size`` sequences (None: one), weighted by their share of the response tokens (``mask`` 1),
    each trimmed to the response tokens its rows have and (``prompt_attn``, the prompts'
    ``[B, P]`` attention mask) to the prompt columns any of its rows attends to."""
    if size is not None and size < 1:
        raise ValueError(f"--micro-batch-size must be >= 1 or None; got {size}")
    step = len(rows) if size is None else size
    chunks = [rows[lo : lo + step] for lo in range(0, len(rows), max(step, 1))]
    tokens = [float(mask[c].sum()) for c in chunks]
    total = sum(tokens)
    out = []
    for c, n in zip(chunks, tokens, strict=True):
        used = mask[c].any(0).nonzero()
        width = int(used.max()) + 1 if len(used) else 1
        start = 0
        if prompt_attn is not None:
            attended = prompt_attn[c].any(0).nonzero()
            # one column of the padding they share stays: the repetition penalty, as
            # generate applies it, counts the pad token as seen on a padded row
            start = max(int(attended.min()) - 1, 0) if len(attended) else 0
        # no response tokens at all: every loss is 0; keep the chunks equal
        weight = n / total if total else 1.0 / len(chunks)
        out.append(MicroBatch(c, weight, start, width))
    return out


def accumulate_objectives(
    opt: Any,
    chunks: list[MicroBatch],
    losses_of: Callable[[MicroBatch], tuple[list[torch.Tensor], torch.Tensor | None]],
    probe: bool,
) -> Any:
    """One MOGD step over the update batch: ``losses_of(chunk)`` runs the forward of a
    micro-batch and gives its k losses (token means over its own rows) and the regularizer R they
    share (None: none). Returns ``opt.step()``'s StepInfo. Profiler ranges: policy_forward,
    policy_backward, mogd."""
    if probe and len(chunks) != 1:
        raise ValueError(
            "probe mode takes the losses of the whole update batch in one step: use "
            "--probe full with --micro-batch-size, or a --micro-batch-size of at least "
            "the update batch"
        )
    for chunk in chunks:
        with record_function("policy_forward"):
            losses, regularizer = losses_of(chunk)
        with record_function("policy_backward"):
            if probe:  # the probe's k gradients, the weights, one backward of Σ w_i L_i + R
                opt.backward(losses, regularizer=regularizer)
                continue
            if regularizer is not None:
                with opt.regularizer():
                    (regularizer * chunk.weight).backward(retain_graph=True)
            for i, loss in enumerate(losses):
                with opt.objective(i):
                    (loss * chunk.weight).backward(retain_graph=i < len(losses) - 1)
    with record_function("mogd"):
        return opt.step()  # Gram, weights, Σ w_i g_i, clip, the inner optimizer's step
