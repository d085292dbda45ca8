"""Weightings: pure maps from a Gram matrix G to the k weights on the raw gradients.

Every method of DESIGN §1 is a map G ↦ w with update direction d = Σ_i w_i g_i. Nothing here touches a
gradient; the optimizer builds G and applies w.

Each weighting has two equivalent entry points: :meth:`Weighting.solve` validates G and solves in
float64 on the host (the reference, with :func:`mogd.min_norm`), and :meth:`Weighting.solve_tensor`
computes the same map with tensor operations on G's device, without reading a value back to the host
(:mod:`mogd.device_solve`), so that a CUDA step never waits for the GPU.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from mogd.device_solve import min_norm_masked
from mogd.solver import as_gram, min_norm

__all__ = ["GAPO", "MGDA", "PGAPO", "Linear", "Weighting", "WeightingResult"]


@dataclass(frozen=True)
class WeightingResult:
    """What a weighting computed from one Gram matrix.

    Attributes:
        weights: float64 tensor [k]: d = Σ_i weights_i g_i (on the CPU from :meth:`Weighting.solve`,
            on G's device from :meth:`Weighting.solve_tensor`).
        alpha: the simplex point of the min-norm QP (None for methods without a QP).
        kkt_residual: the QP's KKT residual (None without a QP): a float from ``solve``, a float64
            0-dim tensor on G's device from ``solve_tensor``.
    """

    weights: torch.Tensor
    alpha: torch.Tensor | None
    kkt_residual: float | torch.Tensor | None


class Weighting(ABC):
    """A map from a k×k Gram matrix to k weights on the raw gradients."""

    @abstractmethod
    def solve(self, G: torch.Tensor | np.ndarray) -> WeightingResult:
        """Weights (and the QP's solution, where there is one) for Gram matrix G, in float64 on the
        host, after validating G (ValueError for a non-finite, asymmetric or indefinite G)."""

    @abstractmethod
    def solve_tensor(self, G: torch.Tensor) -> WeightingResult:
        """The same map on G's device, by tensor operations only (no host synchronisation).

        G must be a finite float64 Gram matrix (what :func:`mogd.gram` returns); it is not
        validated, because validating means reading values back. The QP is solved exactly by
        :func:`mogd.device_solve.min_norm_masked` (on the host, one synchronisation, for k > 8).
        """

    def __call__(self, G: torch.Tensor | np.ndarray) -> torch.Tensor:
        return self.solve(G).weights


def _positive_vector(values: Sequence[float] | torch.Tensor, name: str, strict: bool) -> np.ndarray:
    try:
        v = np.asarray(
            values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64
        )
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}") from err
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got {values!r}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} must be finite, got {v.tolist()}")
    if strict and (v <= 0).any():
        raise ValueError(
            f"{name} must be strictly positive (one entry per objective), got {v.tolist()}"
        )
    if not strict and ((v < 0).any() or not (v > 0).any()):
        raise ValueError(
            f"{name} must be non-negative with at least one positive entry, got {v.tolist()}"
        )
    return v


def _check_k(vector: np.ndarray, k: int, name: str) -> None:
    if vector.size != k:
        raise ValueError(f"{name} has {vector.size} entries but there are k = {k} objectives")


class GAPO(Weighting):
    """Gradient-Adaptive Policy Optimization (Li et al. 2025, §3.2, Eq. 6–7).

    Each gradient is rescaled by its norm to the power p, g̃_i = g_i / n_i^p with n_i = ‖g_i‖, i.e.
    G̃ = D G D with D = diag(n_i^-p), and α = argmin_{α ∈ Δ} αᵀG̃α (the min-norm point, MGDA on G̃).

    * ``update="rescaled"`` (default, Eq. 7): d = Σ α_i g̃_i, so w_i = α_i / n_i^p.
    * ``update="raw"`` (App. B, Eq. 17): α applied to the raw losses, w_i = α_i.

    p = 0 is MGDA; p = 1 normalises every gradient (for k = 2 always α = (½, ½)); p = 2 is the paper's
    other setting. For interior α the first-order progress of objectives i and j is in the ratio
    n_i^p / n_j^p (Thm 3.3). An objective with an exactly zero gradient is Pareto-stationary for
    itself: it gets weight 0 and the QP runs over the others. With k = 1 the weight is 1, so a single
    objective trains exactly as the inner optimizer would.
    """

    def __init__(self, p: float = 1.0, update: Literal["rescaled", "raw"] = "rescaled") -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise TypeError(f"p must be a real number >= 0, got {p!r}")
        if not math.isfinite(p) or p < 0:
            raise ValueError(f"p must be a finite number >= 0 (0 = MGDA, 1, 2), got {p!r}")
        if update not in ("rescaled", "raw"):
            raise ValueError(f"update must be 'rescaled' (Eq. 7) or 'raw' (Eq. 17), got {update!r}")
        self.p = float(p)
        self.update = update

    def __repr__(self) -> str:
        return f"GAPO(p={self.p:g}, update={self.update!r})"

    def solve(self, G: torch.Tensor | np.ndarray) -> WeightingResult:
        A = as_gram(G)
        k = A.shape[0]
        if k == 1:
            one = torch.ones(1, dtype=torch.float64)
            return WeightingResult(one, one.clone(), 0.0)
        norms = np.sqrt(np.clip(np.diagonal(A), 0.0, None))
        active = np.flatnonzero(norms > 0)
        alpha = np.zeros(k)
        weights = np.zeros(k)
        kkt = 0.0
        if active.size:
            # Rescale by (n_i / max n)^-p: the same α (G̃ only changes by a positive factor), without
            # overflow when the norms are tiny or huge.
            top = norms[active].max()
            scale = (norms[active] / top) ** -self.p
            tilde = A[np.ix_(active, active)] * np.outer(scale, scale)
            res = min_norm(tilde)
            alpha[active] = res.weights.numpy()
            kkt = res.kkt_residual
            if self.update == "rescaled":
                weights[active] = alpha[active] * scale * top**-self.p
            else:
                weights[active] = alpha[active]
        return WeightingResult(torch.from_numpy(weights), torch.from_numpy(alpha), kkt)

    def solve_tensor(self, G: torch.Tensor) -> WeightingResult:
        G = G.to(torch.float64)
        k = G.shape[0]
        if k == 1:
            one = torch.ones(1, dtype=torch.float64, device=G.device)
            return WeightingResult(
                one, one.clone(), torch.zeros((), dtype=torch.float64, device=G.device)
            )
        norms = G.diagonal().clamp_min(0.0).sqrt()
        active = norms > 0
        top = norms.amax().clamp_min(torch.finfo(torch.float64).tiny)
        ratio = torch.where(active, norms / top, torch.ones_like(norms))
        scale = torch.where(active, ratio**-self.p, torch.zeros_like(norms))
        alpha, kkt = min_norm_masked(G * (scale[:, None] * scale[None, :]), active)
        weights = alpha * scale * top**-self.p if self.update == "rescaled" else alpha
        return WeightingResult(weights, alpha, kkt)


class MGDA(GAPO):
    """Multiple-gradient descent (Désidéri 2012): w = argmin_{w ∈ Δ} wᵀGw, d = Σ w_i g_i.

    The min-norm point of the gradients' convex hull: a common descent direction unless the point
    is Pareto-stationary. Equal to ``GAPO(p=0)``, including its zero-gradient and k = 1 rules.
    """

    def __init__(self) -> None:
        super().__init__(p=0.0, update="rescaled")

    def __repr__(self) -> str:
        return "MGDA()"


class PGAPO(Weighting):
    """P-GAPO (Li et al. 2025, §3.3, Eq. 8): d = Σ_i λ_i g_i / ‖g_i‖, no QP.

    ``preference`` λ is a positive vector with one entry per objective; one that does not sum to 1 is
    divided by its sum. Weights w_i = λ_i / n_i; a zero-gradient objective gets weight 0. With k = 1
    the weight is 1 (the inner optimizer exactly).
    """

    def __init__(self, preference: Sequence[float] | torch.Tensor) -> None:
        lam = _positive_vector(preference, "preference", strict=True)
        self.preference = lam / lam.sum()

    def __repr__(self) -> str:
        return f"PGAPO(preference={[round(float(x), 6) for x in self.preference]})"

    def solve(self, G: torch.Tensor | np.ndarray) -> WeightingResult:
        A = as_gram(G)
        k = A.shape[0]
        _check_k(self.preference, k, "preference")
        if k == 1:
            return WeightingResult(torch.ones(1, dtype=torch.float64), None, None)
        norms = np.sqrt(np.clip(np.diagonal(A), 0.0, None))
        weights = np.zeros(k)
        active = norms > 0
        weights[active] = self.preference[active] / norms[active]
        return WeightingResult(torch.from_numpy(weights), None, None)

    def solve_tensor(self, G: torch.Tensor) -> WeightingResult:
        _check_k(self.preference, G.shape[0], "preference")
        if G.shape[0] == 1:
            return WeightingResult(torch.ones(1, dtype=torch.float64, device=G.device), None, None)
        norms = G.to(torch.float64).diagonal().clamp_min(0.0).sqrt()
        pref = torch.as_tensor(self.preference, dtype=torch.float64).to(G.device, non_blocking=True)
        active = norms > 0
        weights = torch.where(
            active, pref / torch.where(active, norms, torch.ones_like(norms)), 0.0
        )
        return WeightingResult(weights, None, None)


class Linear(Weighting):
    """Linear scalarisation (the MORLHF baseline): d = Σ_i c_i g_i with fixed c ≥ 0, ignoring G."""

    def __init__(self, weights: Sequence[float] | torch.Tensor) -> None:
        self.weights = _positive_vector(weights, "weights", strict=False)

    def __repr__(self) -> str:
        return f"Linear(weights={[round(float(x), 6) for x in self.weights]})"

    def solve(self, G: torch.Tensor | np.ndarray) -> WeightingResult:
        A = as_gram(G)
        _check_k(self.weights, A.shape[0], "weights")
        return WeightingResult(torch.from_numpy(self.weights.copy()), None, None)

    def solve_tensor(self, G: torch.Tensor) -> WeightingResult:
        _check_k(self.weights, G.shape[0], "weights")
        weights = torch.as_tensor(self.weights, dtype=torch.float64)
        return WeightingResult(weights.to(G.device, non_blocking=True), None, None)
