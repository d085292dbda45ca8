"""Pareto evaluation helpers: non-dominated filtering, fronts and the hypervolume indicator.

These work on *evaluated* objective vectors (for example the mean helpfulness reward and the mean
harmlessness score of each checkpoint), not on gradients. The convention follows the RLHF use:
objectives are maximised by default (``maximize=True``); pass ``maximize=False`` for losses, or one
flag per objective for a mix.

Dominance (maximisation): a point ``a`` dominates ``b`` when ``a_j >= b_j`` for every objective ``j``
and ``a_j > b_j`` for at least one. Equal points do not dominate each other, so duplicates of a
non-dominated point are all kept by :func:`non_dominated` (and merged by :func:`pareto_front`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["hypervolume", "non_dominated", "pareto_front"]

# Pairwise dominance is O(m^2 d); chunking the rows bounds the temporary [chunk, m, d] array.
_CHUNK_ELEMENTS = 1 << 22


def _as_points(points: Any, name: str = "points") -> np.ndarray:
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().to(torch.float64).numpy()
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array [m, d] of m points with d objectives, got shape "
            f"{arr.shape}; for a single point pass {name}[None]"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf; drop or fix those rows first")
    return arr


def _signs(maximize: bool | Sequence[bool], d: int) -> np.ndarray:
    """+1 for a maximised objective, -1 for a minimised one, so that ``points * signs`` is maximised."""
    if isinstance(maximize, (bool, np.bool_)):
        return np.full(d, 1.0 if maximize else -1.0)
    flags = list(maximize)
    if len(flags) != d:
        raise ValueError(
            f"maximize has {len(flags)} flags but the points have {d} objectives; pass one bool "
            f"or one flag per objective"
        )
    return np.where(np.asarray(flags, dtype=bool), 1.0, -1.0)


def non_dominated(points: Any, maximize: bool | Sequence[bool] = True) -> np.ndarray:
    """Boolean mask of the points that no other point dominates.

    ``mask[i]`` is True iff there is no ``j`` with ``s * p_j >= s * p_i`` componentwise and
    ``s * p_j != s * p_i``, where ``s`` is +1 for maximised and -1 for minimised objectives.
    Duplicated non-dominated points are all True. Use ``numpy.flatnonzero(mask)`` for indices.

    Args:
        points: ``[m, d]`` array-like or tensor of objective values (m points, d objectives).
        maximize: True (default) if larger is better for every objective, False for all minimised,
            or one flag per objective.
    """
    pts = _as_points(points)
    m, d = pts.shape
    mask = np.ones(m, dtype=bool)
    if m == 0 or d == 0:
        return mask
    p = pts * _signs(maximize, d)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, m * d))
    for start in range(0, m, chunk):
        block = p[start : start + chunk, None, :]  # [c, 1, d] candidates
        geq = np.all(p[None, :, :] >= block, axis=2)  # [c, m]: row j weakly better than candidate
        gt = np.any(p[None, :, :] > block, axis=2)  # [c, m]: row j strictly better somewhere
        mask[start : start + chunk] = ~np.any(geq & gt, axis=1)
    return mask


def pareto_front(points: Any, maximize: bool | Sequence[bool] = True) -> np.ndarray:
    """The non-dominated points, duplicates merged, sorted lexicographically (first objective first).

    For two maximised objectives the result runs along the front: the first objective increases and
    the second decreases from row to row.

    Args:
        points: ``[m, d]`` array-like or tensor of objective values.
        maximize: as in :func:`non_dominated`.

    Returns:
        ``[f, d]`` float64 array, ``f <= m``.
    """
    pts = _as_points(points)
    front = np.unique(pts[non_dominated(pts, maximize)], axis=0)  # unique also sorts the rows
    return front.reshape(-1, pts.shape[1])


def hypervolume(points: Any, reference: Any, maximize: bool | Sequence[bool] = True) -> float:
    """Hypervolume indicator: the Lebesgue measure of the region dominated by the points and
    bounded by the reference point.

    For maximised objectives ``HV(P, r) = vol( U_{p in P} [r_1, p_1] x ... x [r_d, p_d] )``; points
    that do not strictly beat ``r`` in every objective contribute nothing. Computed exactly by
    ``moocore.hypervolume`` (Fonseca et al. 2006 in 2-D/3-D, HV4D+ in 4-D).

    Args:
        points: ``[m, d]`` array-like or tensor of objective values; ``m == 0`` gives 0.
        reference: ``[d]`` reference point, worse than the points of interest in every objective
            (e.g. the scores of the initial policy, or a fixed lower bound).
        maximize: as in :func:`non_dominated`.
    """
    pts = _as_points(points)
    if isinstance(reference, torch.Tensor):
        reference = reference.detach().cpu().to(torch.float64).numpy()
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    if ref.shape[0] != pts.shape[1]:
        raise ValueError(
            f"reference has {ref.shape[0]} coordinates but the points have {pts.shape[1]} "
            f"objectives; pass one reference value per objective"
        )
    if not np.all(np.isfinite(ref)):
        raise ValueError("reference contains NaN or inf; pass a finite reference point")
    if pts.shape[0] == 0:
        return 0.0
    try:
        import moocore
    except ImportError as exc:  # moocore is an optional dependency (extra "rlhf")
        raise ImportError(
            "mogd.pareto.hypervolume needs moocore: pip install moocore (or mogd[rlhf])"
        ) from exc
    signs = _signs(maximize, pts.shape[1])
    # moocore minimises by default; flipping signs turns every objective into a minimised one.
    return float(moocore.hypervolume(-(pts * signs), ref=-(ref * signs)))
