"""The general-k min-norm solve of :func:`mogd.min_norm` as one numba-compiled float64 kernel.

The math is that of the NumPy/LAPACK path in :mod:`mogd.solver`, step for step, so that the two make
the same decisions on degenerate input: validate G, normalise by m = max_i G_ii, give the zero rows
the weight when there are any, else factor G/m = RᵀR by pivoted Cholesky (LAPACK ``dpstf2``'s
left-looking order and stopping rule) with the same tolerance ladder and indefiniteness test, then
solve the non-negative least squares problem

    u* = argmin_{u ≥ 0} ‖R u‖² + (1ᵀu − 1)²,      w = u* / 1ᵀu*

by Lawson–Hanson's active-set method (finite), and certify w by its KKT residual. At k ≤ 32 the
NumPy path spends its time in ~25 library calls of ~1 µs each; here the whole solve is one call.

Lawson–Hanson keeps a QR factor of the passive columns of M = [R; 1ᵀ] (stored as rows, so they are
read contiguously): classical Gram–Schmidt, repeated when a pass cancels most of the column
(orthogonal to working precision), a column appended in O(mp), the factor rebuilt from the first
dropped column when a step leaves the passive set. Since the right-hand side is e_m, Qᵀb is Q's
last row. A column enters when its gradient entry exceeds that entry's rounding error: the textbook
test (> 0) cycles on rounding noise when 0 is in the hull.

numba is an optional dependency (extra ``mogd[solver]``): this module is imported only by
:func:`mogd.solver.min_norm`, the first time a k > 2 solve runs, and compiles once (``cache=True``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = [
    "ASYMMETRIC",
    "INDEFINITE",
    "NEGATIVE_DIAGONAL",
    "NONFINITE",
    "NO_CONVERGENCE",
    "OK",
    "solve",
]

# Status codes of :func:`solve`; the caller turns them into the errors of the NumPy path.
OK, NONFINITE, NEGATIVE_DIAGONAL, ASYMMETRIC, INDEFINITE, NO_CONVERGENCE = range(6)

EPS = float(np.finfo(np.float64).eps)


@numba.njit(cache=True, error_model="numpy")
def _pivoted_cholesky(An, tol, C, piv):  # pragma: no cover - compiled
    """Rank-revealing RᵀR = An[piv][:, piv] in the upper triangle of C (rows < rank); returns rank.

    LAPACK ``dpstf2`` (upper): the remaining diagonal is A_ii minus the running sum of squares of the
    computed rows, the largest is the next pivot, and the factorisation stops once it is ≤ tol."""
    k = An.shape[0]
    C[:, :] = An
    sq = np.zeros(k)
    for i in range(k):
        piv[i] = i
    for j in range(k):
        best, pvt = -np.inf, j
        for i in range(j, k):
            if j > 0:
                sq[i] += C[j - 1, i] * C[j - 1, i]
            d = C[i, i] - sq[i]
            if d > best:
                best, pvt = d, i
        if (j == 0 and best <= 0.0) or (j > 0 and best <= tol) or math.isnan(best):
            return j
        if pvt != j:  # symmetric swap; in rows < j it swaps the computed columns of R
            for c in range(k):
                C[j, c], C[pvt, c] = C[pvt, c], C[j, c]
            for r in range(k):
                C[r, j], C[r, pvt] = C[r, pvt], C[r, j]
            sq[j], sq[pvt] = sq[pvt], sq[j]
            piv[j], piv[pvt] = piv[pvt], piv[j]
        ajj = math.sqrt(best)
        C[j, j] = ajj
        for c in range(j + 1, k):
            s = C[j, c]
            for p in range(j):
                s -= C[p, j] * C[p, c]
            C[j, c] = s / ajj
    return k


@numba.njit(cache=True, error_model="numpy")
def _factor(An, ladder, fit, gram_tol, Mt):  # pragma: no cover - compiled
    """Mt[:, :rank+1] = [R; 1ᵀ]ᵀ with RᵀR ≈ An (rows in G's order; columns of M are rows of Mt, so
    the NNLS below reads them contiguously); returns rank, or −1 when G is indefinite. The
    tolerance climbs the ladder (k·eps first) until the factor reproduces An to ``fit``; a factor
    that never comes within ``gram_tol`` means G is not PSD (see mogd.solver)."""
    k = An.shape[0]
    C = np.empty((k, k))
    piv = np.empty(k, np.int64)
    best_err, best_rank = np.inf, 0
    best = np.empty((0, 0))  # allocated when G is found singular: rare
    for step in range(len(ladder) + 1):
        tol = k * EPS if step == 0 else ladder[step - 1]
        rank = _pivoted_cholesky(An, tol, C, piv)
        Mt[:, :] = 0.0
        for r in range(rank):
            for c in range(r, k):
                Mt[piv[c], r] = C[r, c]
        Mt[:, rank] = 1.0
        if rank == k:  # Cholesky is backward stable; an indefinite G stops early
            return k
        err = 0.0
        for a in range(k):
            for b in range(a, k):
                s = An[a, b]
                for r in range(rank):
                    s -= Mt[a, r] * Mt[b, r]
                err = max(err, abs(s))
        if err < best_err:
            if best.shape[0] == 0:
                best = np.empty((k, k + 1))
            best_err, best_rank = err, rank
            best[:, : rank + 1] = Mt[:, : rank + 1]
        if err <= fit:
            break
    if best_err > gram_tol:
        return -1
    Mt[:, : best_rank + 1] = best[:, : best_rank + 1]
    return best_rank


@numba.njit(cache=True, error_model="numpy")
def _append(Mt, m, j, Qt, R, p):  # pragma: no cover - compiled
    """QR of the passive columns (rows of Qt): orthogonalise column j of M against Qt[:p] into
    Qt[p] by classical Gram–Schmidt, repeated while a pass cancels more than half the norm ("twice
    is enough": orthogonal to working precision); returns the new diagonal R[p, p] (0 when the
    column lies numerically in their span)."""
    norm0 = 0.0
    for i in range(m):
        Qt[p, i] = Mt[j, i]
        norm0 += Mt[j, i] * Mt[j, i]
    norm0 = math.sqrt(norm0)
    for c in range(p):
        R[c, p] = 0.0
    before, norm = norm0, 0.0
    for _ in range(3):
        for c in range(p):
            s = 0.0
            for i in range(m):
                s += Qt[c, i] * Qt[p, i]
            R[c, p] += s
            for i in range(m):
                Qt[p, i] -= s * Qt[c, i]
        norm = 0.0
        for i in range(m):
            norm += Qt[p, i] * Qt[p, i]
        norm = math.sqrt(norm)
        if p == 0 or norm > 0.5 * before:
            break
        before = norm
    if norm <= 1e3 * EPS * norm0:  # numerically dependent: LH must not take it
        return 0.0
    for i in range(m):
        Qt[p, i] /= norm
    R[p, p] = norm
    return norm


@numba.njit(cache=True, error_model="numpy")
def _passive_solve(Qt, R, m, p, z):  # pragma: no cover - compiled
    """z[:p] = argmin ‖M_P z − e_m‖ = R⁻¹ Qᵀ e_m (Qᵀ e_m is the last entry of each row of Qt)."""
    for r in range(p - 1, -1, -1):
        s = Qt[r, m - 1]
        for c in range(r + 1, p):
            s -= R[r, c] * z[c]
        z[r] = s / R[r, r]


@numba.njit(cache=True, error_model="numpy")
def _nnls(Mt, m, u, max_iter):  # pragma: no cover - compiled
    """Lawson–Hanson: u = argmin_{u ≥ 0} ‖M u − e_m‖ for M = Mt[:, :m]ᵀ; returns False past
    max_iter steps."""
    k = Mt.shape[0]
    Qt = np.empty((k, m))
    R = np.empty((k, k))
    z = np.empty(k)
    passive = np.empty(k, np.int64)  # the passive set, in the order of Qt's rows
    in_p = np.zeros(k, np.bool_)
    blocked = np.zeros(k, np.bool_)  # refused since the last change of u
    resid = np.empty(m)
    size = np.empty(m)  # |e_m| + Σ_P u_c |M_c|: what the rounding of resid scales with
    u[:] = 0.0
    p = 0
    steps = 0
    while p < k:
        # resid = e_m − M u; a column enters when its gradient entry Mᵀresid is positive beyond
        # its rounding error (Lawson–Hanson's test is > 0: rounding noise then makes it cycle
        # where 0 is in the hull)
        resid[:] = 0.0
        resid[m - 1] = 1.0
        for c in range(p):
            a, x = passive[c], u[passive[c]]
            for i in range(m):
                resid[i] -= x * Mt[a, i]
        sized = False
        j, top = -1, 0.0
        for c in range(k):
            if not in_p[c] and not blocked[c]:
                s = 0.0
                for i in range(m):
                    s += Mt[c, i] * resid[i]
                if s > top:
                    if not sized:
                        size[:] = 0.0
                        size[m - 1] = 1.0
                        for q in range(p):
                            a, x = passive[q], u[passive[q]]
                            for i in range(m):
                                size[i] += x * abs(Mt[a, i])
                        sized = True
                    noise = 0.0
                    for i in range(m):
                        noise += abs(Mt[c, i]) * size[i]
                    if s > 2.0 * EPS * noise:
                        j, top = c, s
        if j < 0:
            break
        if _append(Mt, m, j, Qt, R, p) == 0.0:
            blocked[j] = True
            continue
        passive[p] = j
        p += 1
        _passive_solve(Qt, R, m, p, z)
        if z[p - 1] <= 0.0:  # the new column would not enter with a positive value
            p -= 1
            blocked[j] = True
            continue
        in_p[j] = True
        blocked[:] = False
        while True:
            steps += 1
            if steps > max_iter:
                return False
            alpha, hit = np.inf, -1  # the longest step towards z that keeps u ≥ 0 (≤ 1)
            for c in range(p):
                if z[c] <= 0.0:
                    x = u[passive[c]]
                    t = x / (x - z[c])
                    if t < alpha:
                        alpha, hit = t, c
            if hit < 0:
                for c in range(p):
                    u[passive[c]] = z[c]
                break
            for c in range(p):  # step to the boundary; drop the columns that reach 0
                i = passive[c]
                u[i] += alpha * (z[c] - u[i])
            u[passive[hit]] = 0.0
            first, q = p, 0
            for c in range(p):
                i = passive[c]
                if u[i] > 0.0:
                    passive[q] = i
                    q += 1
                else:
                    u[i] = 0.0
                    in_p[i] = False
                    first = min(first, c)
            p = first
            # rebuild the factor from the first dropped column on (a column independent of the
            # columns before it stays so when some of them leave)
            for c in range(first, q):
                _append(Mt, m, passive[c], Qt, R, c)
                p += 1
            _passive_solve(Qt, R, m, p, z)
    return True


@numba.njit(cache=True, error_model="numpy")
def solve(A, w, gram_tol, ladder, fit):  # pragma: no cover - compiled
    """The min-norm weights of the k×k Gram A into w; returns (status, value, kkt_residual).

    status is OK or the reason A is refused (NONFINITE, NEGATIVE_DIAGONAL, ASYMMETRIC, INDEFINITE),
    or NO_CONVERGENCE; the checks and their tolerance ``gram_tol`` are those of mogd.solver.as_gram.
    """
    k = A.shape[0]
    scale, low = -np.inf, np.inf
    for a in range(k):
        for b in range(k):
            if not math.isfinite(A[a, b]):
                return NONFINITE, 0.0, 0.0
        scale = max(scale, A[a, a])
        low = min(low, A[a, a])
    tol = gram_tol * max(scale, 0.0)
    if low < -tol:
        return NEGATIVE_DIAGONAL, 0.0, 0.0
    if scale <= 0.0:
        for a in range(k):
            for b in range(k):
                if A[a, b] != 0.0:
                    return NEGATIVE_DIAGONAL, 0.0, 0.0
    G = np.empty((k, k))
    for a in range(k):
        for b in range(k):
            if abs(A[a, b] - A[b, a]) > tol:
                return ASYMMETRIC, 0.0, 0.0
            G[a, b] = (A[a, b] + A[b, a]) * 0.5
    zeros = 0
    for a in range(k):
        zeros += G[a, a] <= 0.0
    if scale <= 0.0:
        w[:] = 1.0 / k
    elif zeros > 0:
        for a in range(k):
            w[a] = 1.0 / zeros if G[a, a] <= 0.0 else 0.0
    elif k == 1:
        w[0] = 1.0
    else:
        An = G / scale
        Mt = np.empty((k, k + 1))
        rank = _factor(An, ladder, fit, gram_tol, Mt)
        if rank < 0:
            return INDEFINITE, 0.0, 0.0
        if not _nnls(Mt, rank + 1, w, 50 * k):
            return NO_CONVERGENCE, 0.0, 0.0
        total = w.sum()
        for a in range(k):
            w[a] /= total
    value = 0.0
    Gw = np.empty(k)
    for a in range(k):
        s = 0.0
        for b in range(k):
            s += G[a, b] * w[b]
        Gw[a] = s
        value += w[a] * s
    residual = 0.0
    if scale > 0.0:
        for a in range(k):
            gap = Gw[a] - value
            residual = max(residual, -gap)
            if w[a] > 0.0:
                residual = max(residual, abs(gap))
        residual /= scale
    return OK, max(value, 0.0), residual
