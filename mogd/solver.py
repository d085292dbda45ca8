"""Exact minimum-norm point of a convex hull, from the Gram matrix alone.

Given k gradients g_1..g_k with Gram matrix G = J Jᵀ, the min-norm point of their convex hull is
d* = Σ w_i g_i with

    w = argmin_{w ∈ Δ_k} wᵀ G w,      Δ_k = {w ≥ 0, Σ w_i = 1}

(MGDA, Désidéri 2012; GAPO paper Eq. 7 solves the same problem on a rescaled Gram). Everything here is
float64 whatever comes in: k is small, exactness on degenerate G is what matters.

k > 2 runs as one numba-compiled kernel (:mod:`mogd.solver_jit`, extra ``mogd[solver]``) when numba
is installed: at k ≤ 32 the NumPy/LAPACK path below spends its time in ~25 library calls of ~1 µs
each. The kernel does the same math, so both paths make the same decisions; without numba, or with
``backend="numpy"`` (or ``MOGD_SOLVER=numpy`` in the environment), the NumPy path runs.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg.lapack import dpstrf
from scipy.optimize import nnls

try:
    # SciPy's compiled Lawson–Hanson core (SciPy >= 1.15), without the wrapper's per-call checks of
    # inputs we build ourselves: at small k those checks cost more than the solve.
    from scipy.optimize._nnls import _nnls as _nnls_compiled

    _NNLS_CORE = None if inspect.isfunction(_nnls_compiled) else _nnls_compiled
except ImportError:  # older SciPy: the public wrapper
    _NNLS_CORE = None

__all__ = ["MinNormResult", "as_gram", "kkt_residual", "min_norm"]

# A Gram from float32 gradients is only accurate to ~1e-7 of its largest diagonal, so symmetry and
# semi-definiteness are checked to this relative tolerance: rounding passes, real indefiniteness fails.
GRAM_TOL = 1e-5

# The pivoted Cholesky's stopping tolerances after k·eps, and how closely RᵀR must reproduce G/m to
# end the climb (see _factor).
FACTOR_LADDER = np.array([1e-10, 1e-7])
FACTOR_FIT = 1e-9

# Why a matrix is not a Gram matrix; the kernel reports the same reasons by status code.
NONFINITE = "G contains NaN or inf: a gradient was not finite; check the losses"
NEGATIVE_DIAGONAL = "G has a negative diagonal entry: it is not a Gram matrix (G = J Jᵀ)"
ASYMMETRIC = "G is not symmetric: pass the Gram matrix J Jᵀ (symmetrise it if needed)"
INDEFINITE = "G is indefinite: it is not a Gram matrix (G = J Jᵀ) of real gradients"
NO_CONVERGENCE = "NNLS did not converge in 50 k iterations"


@dataclass(frozen=True)
class MinNormResult:
    """Result of :func:`min_norm`.

    Attributes:
        weights: float64 CPU tensor [k] on the simplex: the minimiser w.
        value: wᵀGw, the squared norm of the min-norm point ‖Σ w_i g_i‖².
        kkt_residual: max over the optimality conditions (Gw)_i ≥ wᵀGw (all i), with equality on the
            support, of their violation, relative to max_i G_ii. 0 for an exact solution.
        support: indices i with w_i > 0 (read from the weights when first asked for: a solve in a
            training step never needs it).
    """

    weights: torch.Tensor
    value: float
    kkt_residual: float

    @functools.cached_property
    def support(self) -> tuple[int, ...]:
        return tuple(torch.nonzero(self.weights > 0).flatten().tolist())


def as_gram(G: torch.Tensor | np.ndarray) -> np.ndarray:
    """Validate a Gram matrix and return it as a symmetric float64 NumPy array.

    Raises ``TypeError`` for anything but a tensor / array, ``ValueError`` for a non-square,
    non-finite, non-symmetric or clearly indefinite matrix (relative tolerance ``GRAM_TOL``;
    the tiny negative eigenvalues that rounding produces are accepted).
    """
    A = _square_float64(G)
    # one reduction decides the common case (a non-finite entry makes the sum non-finite)
    if not math.isfinite(float(A.sum())) and not np.isfinite(A).all():
        raise ValueError(NONFINITE)
    diag = np.diagonal(A)
    scale = float(diag.max())
    tol = GRAM_TOL * max(scale, 0.0)
    if float(diag.min()) < -tol or (scale <= 0.0 and np.abs(A).max() > 0.0):
        raise ValueError(NEGATIVE_DIAGONAL)
    if float(np.abs(A - A.T).max()) > tol:
        raise ValueError(ASYMMETRIC)
    return (A + A.T) * 0.5  # exactly symmetric


def _square_float64(G: torch.Tensor | np.ndarray) -> np.ndarray:
    """G as a square float64 NumPy array (a view when it already is one, e.g. a float64 CPU tensor)."""
    if isinstance(G, torch.Tensor):
        if G.dtype is torch.float64 and G.is_cpu and not G.requires_grad:
            A = G.numpy()
        elif not (G.dtype.is_floating_point or G.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"G must be a real floating-point tensor, got dtype {G.dtype}")
        else:
            A = G.detach().to("cpu", torch.float64).numpy()
    elif isinstance(G, np.ndarray):
        A = np.asarray(G, dtype=np.float64)
    else:
        raise TypeError(f"G must be a torch.Tensor or numpy.ndarray, got {type(G).__name__}")
    if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] == 0:
        raise ValueError(f"G must be a non-empty square k×k matrix, got shape {tuple(A.shape)}")
    return A


def kkt_residual(G: np.ndarray, w: np.ndarray) -> float:
    """Violation of the KKT conditions of min_{Δ} wᵀGw at w, relative to max_i G_ii.

    Optimality holds iff (Gw)_i ≥ wᵀGw for all i, with equality where w_i > 0.
    """
    scale = float(G.diagonal().max())
    if scale <= 0.0:
        return 0.0
    Gw = G @ w
    gap = Gw - float(w @ Gw)
    return max(-float(gap.min()), float(np.abs(gap[w > 0]).max()), 0.0) / scale


def min_norm(G: torch.Tensor | np.ndarray, *, backend: str = "auto") -> MinNormResult:
    """Minimum-norm point of the convex hull of k gradients given their Gram matrix G.

    Solves ``w = argmin_{w ∈ Δ_k} wᵀGw`` exactly (up to float64 rounding):

    * k = 2: closed form w_1 = clip((G_22 − G_12) / (G_11 + G_22 − 2 G_12), 0, 1);
    * k > 2: G = RᵀR by pivoted Cholesky (LAPACK ``dpstrf``, rank-revealing, so singular G is fine),
      then the non-negative least squares problem

          u* = argmin_{u ≥ 0} ‖R u‖² + (1ᵀu − 1)²,      w = u* / 1ᵀu*

      which is exact: writing u = t·w with w ∈ Δ gives t²·wᵀGw + (t − 1)², whose minimum over t is
      wᵀGw / (1 + wᵀGw), increasing in wᵀGw. NNLS is Lawson–Hanson's active-set method (finite).

    G is normalised by max_i G_ii first, so scales from 1e-30 to 1e30 behave alike. Zero rows (an
    objective with zero gradient) make 0 a hull point: their weights share 1 and the value is 0.
    Duplicated or antipodal gradients are fine; when the minimiser is not unique one is returned.

    Args:
        G: k×k Gram matrix (torch tensor of any float dtype, or NumPy array).
        backend: for k > 2, ``"numba"`` (the compiled kernel; needs ``mogd[solver]``), ``"numpy"``
            (NumPy/LAPACK) or ``"auto"``: numba when it is installed, unless the environment sets
            ``MOGD_SOLVER=numpy`` (read once, at the first k > 2 solve). Both give the same result.

    Returns:
        :class:`MinNormResult` with float64 weights on the simplex, value, KKT residual and support.
    """
    if G.shape == (2, 2):
        return _min_norm_two(G)
    if backend == "auto":
        kernel = _auto_kernel()
    elif backend == "numba":
        kernel = _numba_kernel()
        if kernel is None:
            raise ModuleNotFoundError(
                'backend="numba" needs numba: pip install "mogd[solver]", or use backend="numpy"'
            )
    elif backend == "numpy":
        kernel = None
    else:
        raise ValueError(f'backend must be "auto", "numba" or "numpy", got {backend!r}')
    if kernel is not None:
        return _min_norm_compiled(G, kernel)
    A = as_gram(G)
    k = A.shape[0]
    scale = float(np.diagonal(A).max())
    if scale <= 0.0:
        w = np.full(k, 1.0 / k)
    else:
        An = A / scale
        zero = np.diagonal(An) <= 0.0
        if zero.any():
            w = zero / zero.sum()
        elif k == 1:
            w = np.ones(1)
        else:
            w = _nnls(An)
    Gw = A @ w
    value = float(w @ Gw)
    positive = w > 0
    residual = 0.0
    if scale > 0.0:  # kkt_residual, reusing Gw
        gap = Gw - value
        residual = max(-float(gap.min()), float(np.abs(gap[positive]).max()), 0.0) / scale
    return MinNormResult(torch.from_numpy(w), max(value, 0.0), residual)


@dataclass(frozen=True)
class _Kernel:
    """The compiled solve and the message for each status code it returns."""

    solve: Callable
    errors: dict[int, tuple[type[Exception], str]]


def _min_norm_compiled(G: torch.Tensor | np.ndarray, kernel: _Kernel) -> MinNormResult:
    """k > 2 in one compiled call: the checks of as_gram and the solve of the NumPy path below."""
    A = None
    if type(G) is torch.Tensor and G.dtype is torch.float64:
        try:
            A = G.numpy()  # what mogd.gram returns (float64 on the CPU): read in place
        except (RuntimeError, TypeError):  # requires grad, or not on the CPU
            pass
    if A is None or A.ndim != 2 or not A.flags.c_contiguous:
        # one compiled specialisation, not one per memory layout
        A = np.ascontiguousarray(_square_float64(G))
    k = A.shape[0]
    if A.shape[1] != k or k == 0:
        raise ValueError(f"G must be a non-empty square k×k matrix, got shape {tuple(A.shape)}")
    w = np.empty(k)
    status, value, residual = kernel.solve(A, w, GRAM_TOL, FACTOR_LADDER, FACTOR_FIT)
    if status:
        error, message = kernel.errors[status]
        raise error(message)
    return MinNormResult(torch.from_numpy(w), value, residual)


@functools.cache
def _numba_kernel() -> _Kernel | None:
    """The compiled solve, or None without numba. Imported on first use: numba's import is slow."""
    try:
        from mogd import solver_jit as jit
    except ImportError:
        return None
    errors: dict[int, tuple[type[Exception], str]] = {
        jit.NONFINITE: (ValueError, NONFINITE),
        jit.NEGATIVE_DIAGONAL: (ValueError, NEGATIVE_DIAGONAL),
        jit.ASYMMETRIC: (ValueError, ASYMMETRIC),
        jit.INDEFINITE: (ValueError, INDEFINITE),
        jit.NO_CONVERGENCE: (RuntimeError, NO_CONVERGENCE),
    }
    return _Kernel(jit.solve, errors)


@functools.cache
def _auto_kernel() -> _Kernel | None:
    if os.environ.get("MOGD_SOLVER", "auto") == "numpy":
        return None
    return _numba_kernel()


def _min_norm_two(G: torch.Tensor | np.ndarray) -> MinNormResult:
    """k = 2 in plain Python floats: the same checks and answer as the general path, in ~µs."""
    if isinstance(G, torch.Tensor):
        if not G.dtype.is_floating_point:
            raise TypeError(f"G must be a real floating-point tensor, got dtype {G.dtype}")
        (a, c), (c2, b) = G.tolist()
    elif isinstance(G, np.ndarray):
        (a, c), (c2, b) = G.astype(np.float64, copy=False).tolist()
    else:
        raise TypeError(f"G must be a torch.Tensor or numpy.ndarray, got {type(G).__name__}")
    if not math.isfinite(a + b + c + c2) and not all(map(math.isfinite, (a, b, c, c2))):
        raise ValueError(NONFINITE)
    scale = a if a > b else b
    tol = GRAM_TOL * scale if scale > 0.0 else 0.0
    if (a if a < b else b) < -tol or (scale <= 0.0 and (c != 0.0 or c2 != 0.0)):
        raise ValueError(NEGATIVE_DIAGONAL)
    if abs(c - c2) > tol:
        raise ValueError(ASYMMETRIC)
    c = 0.5 * (c + c2)
    # Smallest eigenvalue of [[a, c], [c, b]], exactly.
    if 0.5 * (a + b) - math.hypot(0.5 * (a - b), c) < -tol:
        raise ValueError(INDEFINITE)
    if scale <= 0.0:
        w1 = 0.5
    elif a <= 0.0 or b <= 0.0:
        w1 = 0.5 if a <= 0.0 and b <= 0.0 else (1.0 if a <= 0.0 else 0.0)
    else:
        w1 = _two(a / scale, b / scale, c / scale)
    w2 = 1.0 - w1
    g1, g2 = a * w1 + c * w2, c * w1 + b * w2
    value = w1 * g1 + w2 * g2
    gap1, gap2 = g1 - value, g2 - value
    residual = max(0.0, -gap1, -gap2, abs(gap1) if w1 > 0 else 0.0, abs(gap2) if w2 > 0 else 0.0)
    weights = torch.from_numpy(np.array((w1, w2)))  # faster than torch.tensor([w1, w2])
    return MinNormResult(
        weights, value if value > 0.0 else 0.0, residual / scale if scale > 0.0 else 0.0
    )


def _two(a: float, b: float, c: float) -> float:
    """w_1 of the k = 2 problem; ‖g_1 − g_2‖² = a + b − 2c is 0 for identical gradients (any w)."""
    denom = a + b - 2.0 * c
    w1 = 0.5 if denom <= 0.0 else min(max((b - c) / denom, 0.0), 1.0)
    return w1 if math.isfinite(w1) else 0.5


def _factor(An: np.ndarray) -> np.ndarray:
    """The matrix [R; 1ᵀ] of the NNLS below, with R (rank × k) and RᵀR ≈ An by pivoted Cholesky
    (LAPACK ``dpstrf``).

    dpstrf stops once the largest remaining pivot is below its tolerance. Continuing into a Schur
    complement that holds only rounding noise divides noise by noise, so the tolerance is raised
    step by step until the factor reproduces G. What no factor explains is G's distance from the
    PSD cone: large means G was indefinite, not a Gram matrix. A full-rank factor needs no check:
    Cholesky is backward stable, and an indefinite matrix always stops early on a negative pivot.
    """
    k = An.shape[0]
    best_err, best = np.inf, np.ones((1, k))
    for tol in (k * np.finfo(np.float64).eps, *FACTOR_LADDER.tolist()):
        c, piv, rank, info = dpstrf(An, tol=tol, lower=0)
        if info < 0:
            raise ValueError(f"G could not be factorised (LAPACK dpstrf info={info})")
        M = np.ones((rank + 1, k))
        M[:rank, piv - 1] = c[:rank] * _upper(k)[:rank]  # dpstrf leaves the lower part as it was
        if rank == k:
            return M
        R = M[:rank]
        err = float(np.abs(An - R.T @ R).max())
        if err < best_err:
            best_err, best = err, M
        if err <= FACTOR_FIT:
            break
    if best_err > GRAM_TOL:
        raise ValueError(INDEFINITE)
    return best


@functools.cache
def _upper(k: int) -> np.ndarray:
    return np.triu(np.ones((k, k)))


def _nnls(An: np.ndarray) -> np.ndarray:
    M = _factor(An)
    rhs = np.zeros(M.shape[0])
    rhs[-1] = 1.0
    k = An.shape[0]
    if _NNLS_CORE is not None:
        u, _, info = _NNLS_CORE(M, rhs, 50 * k)
        if info == 3:
            raise RuntimeError(NO_CONVERGENCE)
    else:
        u, _ = nnls(M, rhs, maxiter=50 * k)
    return u / u.sum()
