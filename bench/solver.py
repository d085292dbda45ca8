"""Min-norm solver benchmark: mogd.min_norm against scipy SLSQP, quadprog and Sener & Koltun's
Frank-Wolfe MGDA solver, on Gram matrices of three families and k in {2, 4, ..., 64}.

All four solve min_{w in simplex} w^T G w. Peers get G / max_i G_ii (the scaling they need to behave;
ours takes G as is). quadprog needs a strictly positive definite matrix, so it gets the smallest
ridge 1e-12 * 10^j that it accepts (found before timing). Ours gets a float64 torch tensor (what
mogd.gram returns), the peers float64 numpy arrays.

Columns: median time per solve in microseconds over all problems of a row, each peer's time as a
ratio to ours (>1: ours faster), and the objective gap (w_peer^T G w_peer - w_ours^T G w_ours) /
max_i G_ii, worst (max) and best (min) over the row's problems: a negative best gap would mean the
peer found a better point than ours. Peer weights are clipped to >= 0 and renormalised first.

    python bench/solver.py            # full run
    python bench/solver.py --quick    # a few problems per row, fewer repeats
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import quadprog
import torch
from scipy.optimize import minimize

import mogd

KS = (2, 4, 8, 16, 32, 64)
FAMILIES = ("well-posed", "rank-deficient", "badly-scaled")


# ---------------------------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------------------------


def make_gram(rng: np.random.Generator, family: str, k: int) -> np.ndarray:
    n = 4 * k + 8
    J = rng.standard_normal((k, n)) + rng.standard_normal(n)  # shared component: nontrivial faces
    if family == "rank-deficient":
        r = max(1, k // 4)
        J = rng.standard_normal((k, r)) @ rng.standard_normal((r, n))
        J[: k // 2] = J[k // 2 : 2 * (k // 2)]  # and exact duplicates
    elif family == "badly-scaled":
        J *= 10.0 ** rng.uniform(-4, 4, size=(k, 1)) * 10.0 ** rng.uniform(-10, 10)
    G = J @ J.T
    return (G + G.T) / 2


# ---------------------------------------------------------------------------------------------
# Peers
# ---------------------------------------------------------------------------------------------


def slsqp(Gn: np.ndarray) -> np.ndarray:
    k = Gn.shape[0]
    res = minimize(
        lambda w: w @ Gn @ w,
        np.full(k, 1.0 / k),
        jac=lambda w: 2.0 * (Gn @ w),
        bounds=[(0.0, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(k)}],
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 1000},
    )
    return res.x


def quadprog_setup(Gn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(P, C, b, ridge): minimise 1/2 w^T P w s.t. 1^T w = 1 (meq = 1), w >= 0, P = 2 Gn + ridge I."""
    k = Gn.shape[0]
    C = np.hstack([np.ones((k, 1)), np.eye(k)])
    b = np.concatenate([[1.0], np.zeros(k)])
    for j in range(13):
        ridge = 1e-12 * 10.0**j
        P = 2.0 * Gn + ridge * np.eye(k)
        try:
            quadprog.solve_qp(P, np.zeros(k), C, b, 1)
            return P, C, b, ridge
        except ValueError:  # "matrix G is not positive definite"
            continue
    raise RuntimeError("quadprog failed even with ridge 1")


class FrankWolfeMGDA:
    """Sener & Koltun (NeurIPS 2018) MinNormSolver.find_min_norm_element_FW, on the Gram matrix:
    start from the best pair's 2-vector solution, then Frank-Wolfe steps towards the vertex with
    the smallest (G w)_t, each with the exact 2-point line search; stop when the L1 change is
    below STOP_CRIT or after MAX_ITER steps. Their constants are kept, including the 0.999/0.001
    clamp of the 2-point solution. One deviation: their initial dmin = 1e8 fails for Gram
    entries above 1e8, so the best pair starts from +inf (peers get G / max G_ii anyway)."""

    MAX_ITER = 250
    STOP_CRIT = 1e-5

    @staticmethod
    def _min_norm_element_from2(v1v1: float, v1v2: float, v2v2: float) -> tuple[float, float]:
        if v1v2 >= v1v1:
            return 0.999, v1v1
        if v1v2 >= v2v2:
            return 0.001, v2v2
        gamma = -1.0 * ((v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2))
        return gamma, v2v2 + gamma * (v1v2 - v2v2)

    @classmethod
    def solve(cls, G: np.ndarray) -> np.ndarray:
        n = G.shape[0]
        dmin, sol = np.inf, None
        for i in range(n):
            for j in range(i + 1, n):
                c, d = cls._min_norm_element_from2(G[i, i], G[i, j], G[j, j])
                if d < dmin:
                    dmin, sol = d, ((i, j), c)
        sol_vec = np.zeros(n)
        sol_vec[sol[0][0]] = sol[1]
        sol_vec[sol[0][1]] = 1 - sol[1]
        if n < 3:
            return sol_vec
        for _ in range(cls.MAX_ITER):
            t_iter = int(np.argmin(G @ sol_vec))
            v1v1 = sol_vec @ G @ sol_vec
            v1v2 = sol_vec @ G[:, t_iter]
            v2v2 = G[t_iter, t_iter]
            nc, _ = cls._min_norm_element_from2(v1v1, v1v2, v2v2)
            new_sol_vec = nc * sol_vec
            new_sol_vec[t_iter] += 1 - nc
            if np.sum(np.abs(new_sol_vec - sol_vec)) < cls.STOP_CRIT:
                return sol_vec
            sol_vec = new_sol_vec
        return sol_vec


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def time_call(fn, repeats: int) -> float:
    """Median seconds per call over `repeats` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) * 1e-9


def value(G: np.ndarray, w: np.ndarray) -> float:
    w = np.clip(np.asarray(w, dtype=np.float64), 0.0, None)
    w = w / w.sum()
    return float(w @ G @ w)


def solver_calls(Gt: torch.Tensor, Gn: np.ndarray, P, C, b) -> dict:
    a = np.zeros(Gn.shape[0])
    return {
        "ours": lambda: mogd.min_norm(Gt).weights,
        "slsqp": lambda: slsqp(Gn),
        "quadprog": lambda: quadprog.solve_qp(P, a, C, b, 1)[0],
        "fw": lambda: FrankWolfeMGDA.solve(Gn),
    }


def run_row(rng, family: str, k: int, problems: int, repeats: int) -> dict:
    times: dict[str, list[float]] = {m: [] for m in ("ours", "slsqp", "quadprog", "fw")}
    gaps: dict[str, list[float]] = {m: [] for m in ("slsqp", "quadprog", "fw")}
    ridges = []
    for _ in range(problems):
        G = make_gram(rng, family, k)
        m = float(np.max(np.diag(G)))
        Gn = G / m
        Gt = torch.from_numpy(G)
        P, C, b, ridge = quadprog_setup(Gn)
        ridges.append(ridge)
        calls = solver_calls(Gt, Gn, P, C, b)
        for name, fn in calls.items():
            times[name].append(time_call(fn, repeats))
        v_ours = value(G, calls["ours"]().numpy())
        for name in gaps:
            gaps[name].append((value(G, calls[name]()) - v_ours) / m)
    med = {name: statistics.median(t) * 1e6 for name, t in times.items()}
    return {
        "family": family,
        "k": k,
        "us": med,
        "gap_max": {n: max(g) for n, g in gaps.items()},
        "gap_min": {n: min(g) for n, g in gaps.items()},
        "ridge": max(ridges),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 problems per row, 5 repeats")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    problems, repeats = (3, 5) if args.quick else (20, 30)
    rng = np.random.default_rng(args.seed)
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # SLSQP on singular problems

    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}; "
        f"{problems} problems per row, median of {repeats} calls each"
    )
    head = (
        f"{'family':<15}{'k':>3} | {'ours us':>8} {'SLSQP us':>9} {'x':>6} {'quadprog':>9} {'x':>6}"
        f" {'FW us':>8} {'x':>6} | {'gap SLSQP':>19} {'gap quadprog':>19} {'gap FW':>19}"
        f" | ridge"
    )
    print(head)
    print("-" * len(head))
    worst_beaten = 0.0
    vs_quadprog: dict[int, list[float]] = {k: [] for k in KS}
    for family in FAMILIES:
        for k in KS:
            r = run_row(rng, family, k, problems, repeats)
            us = r["us"]
            vs_quadprog[k].append(us["quadprog"] / us["ours"])
            gap = {n: f"{r['gap_min'][n]:+.1e}..{r['gap_max'][n]:+.1e}" for n in r["gap_max"]}
            worst_beaten = min(worst_beaten, *r["gap_min"].values())
            print(
                f"{family:<15}{k:>3} | {us['ours']:>8.1f} {us['slsqp']:>9.1f}"
                f" {us['slsqp'] / us['ours']:>6.1f} {us['quadprog']:>9.1f}"
                f" {us['quadprog'] / us['ours']:>6.2f} {us['fw']:>8.1f} {us['fw'] / us['ours']:>6.1f}"
                f" | {gap['slsqp']:>19} {gap['quadprog']:>19} {gap['fw']:>19} | {r['ridge']:.0e}"
            )
    print(
        "x = peer time / ours (> 1: ours faster). gap = (peer value - our value) / max G_ii, "
        "min..max over the row's problems (< 0: the peer found a lower value)."
    )
    print(f"largest amount by which any peer beat ours: {-worst_beaten:.1e} (relative to max G_ii)")
    print(
        "quadprog time / ours, worst family per k: "
        + ", ".join(f"k={k}: {min(v):.2f}" for k, v in vs_quadprog.items())
    )


if __name__ == "__main__":
    main()
