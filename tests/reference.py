"""Independent float64 references for the min-norm QP over the simplex, shared by the tests.

Written apart from ``mogd.solver`` (brute force over supports, plain KKT check) so that the tests
never check the implementation against itself.
"""

import itertools

import numpy as np


def kkt_violation(G: np.ndarray, w: np.ndarray) -> float:
    """How far (Gw)_i >= w^T G w for all i, with equality where w_i > 0, is from holding, relative
    to max_i G_ii. Zero exactly at the optimum of the convex QP."""
    m = float(np.max(np.diag(G)))
    if m == 0.0:
        return 0.0
    Gw = G @ w
    v = float(w @ Gw)
    lower = max(0.0, v - float(Gw.min()))
    on_support = float(np.max(np.abs(Gw[w > 0] - v)))
    return max(lower, on_support) / m


def brute_force_min_norm(G: np.ndarray) -> tuple[float, np.ndarray]:
    """min over the simplex of w^T G w by enumerating supports S: on each, solve the KKT system
    [G_SS 1; 1^T 0] [w; -mu] = [0; 1] (consistent for PSD G; lstsq handles singular G_SS), keep
    nonnegative solutions and take the best. At a minimal-support optimum the solution on S is
    unique, so the optimum is among the candidates. G is divided by max_i G_ii first (the argmin
    does not change) so that lstsq's rank cut-off sees G and the ones on the same scale."""
    k = G.shape[0]
    m = float(np.max(np.diag(G)))
    Gn = G / m if m > 0 else G
    best_v, best_w = np.inf, None
    for size in range(1, k + 1):
        for S in itertools.combinations(range(k), size):
            S = list(S)
            A = np.zeros((size + 1, size + 1))
            A[:size, :size] = Gn[np.ix_(S, S)]
            A[:size, size] = 1.0
            A[size, :size] = 1.0
            b = np.zeros(size + 1)
            b[size] = 1.0
            sol = np.linalg.lstsq(A, b, rcond=None)[0][:size]
            if not np.all(np.isfinite(sol)) or sol.min() < -1e-9:
                continue
            w = np.zeros(k)
            w[S] = np.clip(sol, 0.0, None)
            w /= w.sum()
            v = float(w @ G @ w)
            if v < best_v:
                best_v, best_w = v, w
    return best_v, best_w


def gapo_weights(G: np.ndarray, p: float) -> np.ndarray:
    """DESIGN §1 GAPO(p) weights on the raw gradients (p = 0: MGDA), by brute force: w_i = α_i / n_i^p
    with α the min-norm point of D G D, D = diag(n_i^-p), over the objectives with a nonzero gradient
    (the others get weight 0). k = 1 gets weight 1: a single objective is the inner optimizer's."""
    k = G.shape[0]
    if k == 1:
        return np.ones(1)
    n = np.sqrt(np.clip(np.diag(G), 0.0, None))
    active = np.flatnonzero(n > 0)
    w = np.zeros(k)
    if active.size:
        D = n[active] ** -p
        _, alpha = brute_force_min_norm(G[np.ix_(active, active)] * np.outer(D, D))
        w[active] = alpha * D
    return w
