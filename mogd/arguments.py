"""Validation of what users pass to :class:`mogd.MOGD`: losses, probes and settings.

Every error names the argument and the fix (DESIGN §6).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from mogd.distributed import is_sharded
from mogd.weighting import Weighting

__all__ = [
    "check_choice",
    "check_losses",
    "check_max_norm",
    "check_not_closure",
    "check_objective",
    "check_regularizer",
    "check_regularizer_context",
    "check_weighting",
    "resolve_probe",
]


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_weighting(weighting: Any) -> Weighting:
    if not isinstance(weighting, Weighting):
        raise TypeError(
            "weighting must be a mogd weighting (mogd.GAPO(p=1), mogd.PGAPO([...]), "
            f"mogd.MGDA(), mogd.Linear([...])), got {type(weighting).__name__}"
        )
    return weighting


def check_not_closure(losses: Any) -> None:
    if callable(losses) and not isinstance(losses, torch.Tensor):
        raise TypeError(
            "MOGD.step takes the k losses (or nothing after opt.objective(i) backward passes), "
            "not a closure"
        )


def check_max_norm(max_norm: Any) -> float | None:
    if max_norm is None:
        return None
    if (
        isinstance(max_norm, bool)
        or not isinstance(max_norm, (int, float))
        or not math.isfinite(max_norm)
        or max_norm <= 0
    ):
        raise ValueError(
            f"max_norm must be a finite number > 0 (or None: no clipping), got {max_norm!r}"
        )
    return float(max_norm)


def check_objective(i: Any, k: int | None, probe_mode: bool) -> None:
    """An objective index for ``opt.objective(i)``: an int in 0..k-1 (k: fixed by the first step)."""
    if probe_mode:
        raise ValueError(
            "probe mode computes the per-objective gradients itself: call "
            "opt.step([loss_0, ..., loss_k-1]) instead of opt.objective(i)"
        )
    if isinstance(i, bool) or not isinstance(i, int):
        raise TypeError(f"objective index must be an int in 0..k-1, got {i!r}")
    if i < 0 or (k is not None and i >= k):
        bound = f"0..{k - 1}" if k is not None else "0, 1, ..."
        raise ValueError(f"objective index {i} is out of range: objectives are {bound}")


def check_losses(losses: Any, k: int | None) -> list[torch.Tensor]:
    """The k scalar, differentiable losses of one step (k: the count of earlier steps, if any)."""
    if isinstance(losses, torch.Tensor) or not isinstance(losses, Sequence):
        raise TypeError(
            "losses must be a list or tuple of k scalar tensors, e.g. opt.step([loss_a, "
            f"loss_b]); got {type(losses).__name__} (for one objective pass [loss])"
        )
    if len(losses) == 0:
        raise ValueError("losses is empty; pass one scalar loss per objective")
    if k is not None and len(losses) != k:
        raise ValueError(
            f"got {len(losses)} losses but earlier steps had k = {k} objectives; "
            "pass the same objectives every step"
        )
    for i, loss in enumerate(losses):
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"losses[{i}] must be a tensor, got {type(loss).__name__}")
        if loss.numel() != 1:
            raise ValueError(
                f"losses[{i}] has shape {tuple(loss.shape)}; each loss must be a scalar "
                "(reduce it with .mean() or .sum())"
            )
        if not loss.requires_grad:
            raise ValueError(
                f"losses[{i}] does not require grad: it is not connected to any trainable "
                "parameter (computed under torch.no_grad() or from detached tensors?)"
            )
    return list(losses)


def check_regularizer(regularizer: Any, losses: Any) -> torch.Tensor | None:
    """The regularizer R of one step: None, or a scalar tensor that requires grad, passed with the
    losses (the accumulation form backpropagates it in ``with opt.regularizer():``)."""
    if regularizer is None:
        return None
    if not isinstance(regularizer, torch.Tensor):
        raise TypeError(
            "regularizer must be one scalar tensor (e.g. regularizer=beta * kl.mean(); for several "
            f"regularizers pass their sum), got {type(regularizer).__name__}"
        )
    if regularizer.numel() != 1:
        raise ValueError(
            f"regularizer has shape {tuple(regularizer.shape)}; it must be a scalar "
            "(reduce it with .mean() or .sum())"
        )
    if not regularizer.requires_grad:
        raise ValueError(
            "regularizer does not require grad: it is not connected to any trainable parameter "
            "(computed under torch.no_grad() or from detached tensors?); pass regularizer=None "
            "for a step without one"
        )
    if losses is None:
        raise ValueError(
            "regularizer= comes with the losses: opt.step([loss_0, ...], regularizer=R) or "
            "opt.backward([...], regularizer=R); after `with opt.objective(i):` passes, "
            "backpropagate it in `with opt.regularizer():` and call opt.step()"
        )
    return regularizer


def check_regularizer_context(probe_mode: bool, passed: bool) -> None:
    """``with opt.regularizer():`` is the full mode's accumulation form, once per step."""
    if probe_mode:
        raise ValueError(
            "probe mode backpropagates the regularizer with the weighted losses: pass it as "
            "opt.step([loss_0, ...], regularizer=R) or opt.backward([...], regularizer=R) instead "
            "of opt.regularizer()"
        )
    if passed:
        raise ValueError(
            "the regularizer was already passed as opt.backward(losses, regularizer=R) for this "
            "step; give it one way: regularizer= or `with opt.regularizer():` (or call zero_grad() "
            "first)"
        )


def resolve_probe(probe: Any, trainable: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The probe's trainable parameters (a module's, or the given ones), each once, in order."""
    params: list[torch.Tensor]
    if isinstance(probe, torch.nn.Module):
        params = [p for p in probe.parameters() if p.requires_grad]
    elif isinstance(probe, torch.Tensor):
        params = [probe]
    else:
        try:
            params = list(probe)
        except TypeError as err:
            raise TypeError(
                "probe must be a module (e.g. model.lm_head) or an iterable of parameters"
            ) from err
        if not all(isinstance(p, torch.Tensor) for p in params):
            raise TypeError("probe must be a module or an iterable of parameters (tensors)")
    if not params:
        raise ValueError("probe has no trainable parameters; pass e.g. probe=model.lm_head")
    ids = {id(p) for p in trainable}
    if any(id(p) not in ids for p in params):
        raise ValueError(
            "probe parameters must be trainable parameters of the inner optimizer "
            "(pass the same model's module, e.g. probe=model.lm_head)"
        )
    if any(is_sharded(p) for p in params) and not isinstance(probe, torch.nn.Module):
        raise ValueError(
            "a sharded (DTensor/FSDP2) probe must be given as its module (e.g. probe=model.lm_head): "
            "FSDP2 runs the forward on unsharded copies, which MOGD reaches through the module"
        )
    unique: dict[int, torch.Tensor] = {}
    for p in params:
        unique.setdefault(id(p), p)
    return list(unique.values())
