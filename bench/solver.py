"""Min-norm solver benchmark: mogd.min_norm (both k > 2 paths: the numba kernel and NumPy/LAPACK)
against quadprog, scipy SLSQP and Sener & Koltun's Frank-Wolfe MGDA solver, on Gram matrices of
three families and k in {2, 4, ..., 64}.

All solve min_{w in simplex} w^T G w. Peers get G / max_i G_ii (the scaling they need to behave;
ours takes G as is). quadprog needs a strictly positive definite matrix, so it gets the smallest
ridge 1e-12 * 10^j that it accepts (found before timing). Ours gets a float64 torch tensor (what
mogd.gram returns), the peers float64 numpy arrays.

Timing: ours (both paths) and quadprog are called in turn, one call each per round, for `repeats`
rounds (on a shared machine the load then hits all three alike); the median per problem, then the
median over the row's problems. SLSQP and Frank-Wolfe are slow: they are timed afterwards with
fewer calls (at most ~50 ms per problem). At k = 2 both of our paths are the same closed form.

Columns: median time per solve in microseconds; quadprog's time as a ratio to each of our paths
(>1: ours faster); the slow peers' times as ratios to ours (numba); the objective gap
(w_peer^T G w_peer - w_ours^T G w_ours) / max_i G_ii, worst (max) and best (min) over the row's
problems: a negative best gap would mean the peer found a better point than ours. Peer weights are
clipped to >= 0 and renormalised first.

    python bench/solver.py                  # full run
    python bench/solver.py --quick          # a few problems per row, fewer repeats
    python bench/solver.py --peers quadprog # leave out the slow peers
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numba
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


def time_call(fn, repeats: int, budget_s: float = 0.05) -> float:
    """Median seconds per call over at most `repeats` calls and about `budget_s` (after one warm-up
    call; at least 3 calls)."""
    t0 = time.perf_counter_ns()
    fn()
    repeats = max(3, min(repeats, int(budget_s / max((time.perf_counter_ns() - t0) * 1e-9, 1e-9))))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) * 1e-9


def time_interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, calling them in turn, one call each per round
    (after one warm-up call each)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[int]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter_ns()
            fn()
            times[name].append(time.perf_counter_ns() - t0)
    return {name: statistics.median(t) * 1e-9 for name, t in times.items()}


def value(G: np.ndarray, w: np.ndarray) -> float:
    w = np.clip(np.asarray(w, dtype=np.float64), 0.0, None)
    w = w / w.sum()
    return float(w @ G @ w)


FAST = ("numba", "numpy", "quadprog")  # timed interleaved
SLOW = ("slsqp", "fw")


def solver_calls(Gt: torch.Tensor, Gn: np.ndarray, P, C, b, peers) -> dict:
    a = np.zeros(Gn.shape[0])
    calls = {
        "numba": lambda: mogd.min_norm(Gt, backend="numba").weights,
        "numpy": lambda: mogd.min_norm(Gt, backend="numpy").weights,
        "quadprog": lambda: quadprog.solve_qp(P, a, C, b, 1)[0],
        "slsqp": lambda: slsqp(Gn),
        "fw": lambda: FrankWolfeMGDA.solve(Gn),
    }
    return {name: fn for name, fn in calls.items() if name in ("numba", "numpy") or name in peers}


def run_row(rng, family: str, k: int, problems: int, repeats: int, peers) -> dict:
    times: dict[str, list[float]] = {m: [] for m in ("numba", "numpy", *peers)}
    gaps: dict[str, list[float]] = {m: [] for m in ("numpy", *peers)}
    ridges = []
    for _ in range(problems):
        G = make_gram(rng, family, k)
        m = float(np.max(np.diag(G)))
        Gn = G / m
        Gt = torch.from_numpy(G)
        P, C, b, ridge = quadprog_setup(Gn)
        ridges.append(ridge)
        calls = solver_calls(Gt, Gn, P, C, b, peers)
        fast = time_interleaved({n: f for n, f in calls.items() if n in FAST}, repeats)
        for name, fn in calls.items():
            times[name].append(fast[name] if name in fast else time_call(fn, repeats))
        v_ours = value(G, calls["numba"]().numpy())
        for name in gaps:
            w = calls[name]()
            gaps[name].append((value(G, w.numpy() if name == "numpy" else w) - v_ours) / m)
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
    parser.add_argument("--quick", action="store_true", help="3 problems per row, 20 repeats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--problems", type=int, help="problems per row (default 20; --quick 3)")
    parser.add_argument("--repeats", type=int, help="calls per problem (default 200; --quick 20)")
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS), help="values of k")
    parser.add_argument(
        "--peers", nargs="+", choices=("quadprog", *SLOW), default=["quadprog", *SLOW]
    )
    args = parser.parse_args()
    problems, repeats = (3, 20) if args.quick else (20, 200)
    problems, repeats = args.problems or problems, args.repeats or repeats
    peers = ["quadprog", *(p for p in SLOW if p in args.peers)]
    rng = np.random.default_rng(args.seed)
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # SLSQP on singular problems
    mogd.min_norm(torch.eye(3, dtype=torch.float64), backend="numba")  # compile (or load) first

    print(
        f"torch {torch.__version__}, numba {numba.__version__}, threads {torch.get_num_threads()}; "
        f"{problems} problems per row; ours and quadprog interleaved, median of {repeats} rounds"
    )
    slow_head = "".join(f" {n + ' us':>10} {'x':>6}" for n in peers[1:])
    gap_head = "".join(f" {'gap ' + n:>19}" for n in ("numpy", *peers))
    head = (
        f"{'family':<15}{'k':>3} | {'numba us':>8} {'numpy us':>8} {'quadprog':>8}"
        f" {'qp/numba':>8} {'qp/numpy':>8}{slow_head} |{gap_head} | ridge"
    )
    print(head)
    print("-" * len(head))
    worst_beaten = 0.0
    vs_quadprog = {path: {k: [] for k in args.ks} for path in ("numba", "numpy")}
    for family in FAMILIES:
        for k in args.ks:
            r = run_row(rng, family, k, problems, repeats, peers)
            us = r["us"]
            for path in vs_quadprog:
                vs_quadprog[path][k].append(us["quadprog"] / us[path])
            gap = {n: f"{r['gap_min'][n]:+.1e}..{r['gap_max'][n]:+.1e}" for n in r["gap_max"]}
            worst_beaten = min(worst_beaten, *(r["gap_min"][n] for n in peers))
            slow = "".join(f" {us[n]:>10.1f} {us[n] / us['numba']:>6.1f}" for n in peers[1:])
            print(
                f"{family:<15}{k:>3} | {us['numba']:>8.1f} {us['numpy']:>8.1f}"
                f" {us['quadprog']:>8.1f} {us['quadprog'] / us['numba']:>8.2f}"
                f" {us['quadprog'] / us['numpy']:>8.2f}{slow} |"
                + "".join(f" {gap[n]:>19}" for n in ("numpy", *peers))
                + f" | {r['ridge']:.0e}"
            )
    print(
        "qp/numba, qp/numpy = quadprog time / ours (> 1: ours faster); x = peer time / ours (numba)."
        " gap = (peer value - our value) / max G_ii, min..max over the row's problems (< 0: the"
        " peer found a lower value); gap numpy: our NumPy path against our numba path."
    )
    print(f"largest amount by which any peer beat ours: {-worst_beaten:.1e} (relative to max G_ii)")
    for path, ratios in vs_quadprog.items():
        print(
            f"quadprog time / ours ({path}), worst family per k: "
            + ", ".join(f"k={k}: {min(v):.2f}" for k, v in ratios.items())
        )


if __name__ == "__main__":
    main()
