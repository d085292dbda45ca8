"""Properties of mogd.min_norm, the exact min-norm point of a convex hull from its Gram matrix:
min_{w in simplex} w^T G w (MGDA, Desideri 2012; GAPO paper Eq. 6-7).

Everything is checked against facts computed here in float64 from G (or from J), never against the
solver itself: the simplex, an independent KKT certificate, vertex/uniform bounds, permutation and
scale equivariance, the k = 2 closed form, common descent and a brute force over all supports.

Tolerances follow from the contract: the KKT residual r (relative to m = max_i G_ii) is <= 1e-9, and
for a convex QP the Frank-Wolfe gap bounds the suboptimality, f(w) - f* <= 2 (v - min_i (Gw)_i), so
every value is within 2e-9 m of the optimum and every direction d = sum_i w_i g_i satisfies
||d - d*||^2 <= f(w) - f* (strong convexity of ||d||^2 on the hull).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import brute_force_min_norm, kkt_violation

import mogd

KKT_TOL = 1e-9
VALUE_TOL = 2 * KKT_TOL + 1e-12  # suboptimality implied by the KKT bound, plus rounding
ROUND_TOL = 1e-12  # float64 rounding of w^T G w relative to max G_ii (|w^T|G|w| <= max G_ii)

FAMILIES = ("full", "common", "lowrank", "duplicate", "antipodal", "zero", "lowdim", "inhull")
SCALES = ("unit", "global", "mixed", "both")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", params=["numba", "numpy"])
def backend(request):
    """Every property holds for both k > 2 paths: the compiled kernel and the NumPy/LAPACK one."""
    if request.param == "numba":
        pytest.importorskip("numba", reason="the compiled path needs mogd[solver]")
    return request.param


# ---------------------------------------------------------------------------------------------
# Generators
# ---------------------------------------------------------------------------------------------


def make_jacobian(rng: np.random.Generator, k: int, family: str) -> np.ndarray:
    """Random k x n gradients of a given structure (float64)."""
    n = int(rng.integers(k, 2 * k + 8))
    common = rng.standard_normal(n) * rng.choice([0.0, 1.0, 3.0])
    if family == "full":
        return rng.standard_normal((k, n))
    if family == "common":  # shared component: 0 is often outside the hull, solutions on faces
        return rng.uniform(0.1, 1.0) * rng.standard_normal((k, n)) + rng.standard_normal(n)
    if family == "lowrank":
        r = int(rng.integers(1, k + 1))
        return rng.standard_normal((k, r)) @ rng.standard_normal((r, n)) + common
    if family == "duplicate":
        base = rng.standard_normal((int(rng.integers(1, k + 1)), n)) + common
        return base[rng.integers(0, base.shape[0], size=k)]
    if family == "antipodal":
        J = rng.standard_normal((k, n)) + common
        for i in range(k):
            if i > 0 and rng.random() < 0.4:
                J[i] = -rng.uniform(0.1, 10.0) * J[int(rng.integers(0, i))]
        return J
    if family == "zero":
        J = rng.standard_normal((k, n)) + common
        zero = rng.random(k) < 0.3
        zero[int(rng.integers(0, k))] = True
        J[zero] = 0.0
        return J
    if family == "lowdim":  # many gradients in a space of dimension 1-3
        return rng.standard_normal((k, int(rng.integers(1, 4)))) + common[:1]
    if family == "inhull":  # 0 = sum_i lam_i g_i with lam_i > 0
        return hull_containing_zero(rng, k, n)
    raise AssertionError(family)


def hull_containing_zero(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    J = rng.standard_normal((k, n)) + rng.standard_normal(n)
    if k == 1:
        return np.zeros((1, n))
    lam = rng.dirichlet(np.ones(k))
    J[-1] = -(lam[:-1] @ J[:-1]) / lam[-1]
    return J


def apply_scale(rng: np.random.Generator, J: np.ndarray, scale: str) -> np.ndarray:
    """Scales of G from 1e-30 to 1e30 (global) and rows spanning 1e-12..1e12 of each other (mixed)."""
    k = J.shape[0]
    if scale == "global":
        return J * 10.0 ** rng.uniform(-15, 15)
    if scale == "mixed":
        return J * 10.0 ** rng.uniform(-6, 6, size=(k, 1))
    if scale == "both":
        return J * 10.0 ** (rng.uniform(-9, 9) + rng.uniform(-4, 4, size=(k, 1)))
    return J


def gram64(J: np.ndarray) -> np.ndarray:
    G = J @ J.T
    return (G + G.T) / 2


@st.composite
def cases(draw, k_min=1, k_max=64, families=FAMILIES, scales=SCALES):
    """(J, G) float64 numpy pairs of every structure the solver must handle."""
    k = draw(st.one_of(st.integers(k_min, min(k_max, 8)), st.integers(k_min, k_max)))
    family = draw(st.sampled_from(families))
    scale = draw(st.sampled_from(scales))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    J = apply_scale(rng, make_jacobian(rng, k, family), scale)
    return J, gram64(J)


# ---------------------------------------------------------------------------------------------
# Independent float64 references
# ---------------------------------------------------------------------------------------------


def closed_form_k2(G: np.ndarray) -> tuple[float, np.ndarray, float]:
    """w = (t, 1 - t), t = clip((G22 - G12) / (G11 + G22 - 2 G12), 0, 1); returns (value, w, den)."""
    a, b, c = G[0, 0], G[1, 1], G[0, 1]
    den = a + b - 2 * c  # ||g1 - g2||^2
    t = 1.0 if den <= 0 else float(np.clip((b - c) / den, 0.0, 1.0))
    w = np.array([t, 1 - t])
    return float(w @ G @ w), w, float(den)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def check_result(res, G: np.ndarray) -> np.ndarray:
    """The contract of MinNormResult plus an independent KKT certificate; returns the weights."""
    k = G.shape[0]
    m = float(np.max(np.diag(G)))
    assert isinstance(res.weights, torch.Tensor)
    assert res.weights.dtype == torch.float64 and res.weights.device.type == "cpu"
    assert tuple(res.weights.shape) == (k,)
    w = res.weights.numpy()
    assert np.all(np.isfinite(w)) and np.all(w >= 0), w
    assert abs(w.sum() - 1.0) <= 1e-12, w.sum()
    support = tuple(int(i) for i in res.support)
    assert list(support) == sorted(set(support)) and all(0 <= i < k for i in support)
    outside = np.setdiff1d(np.arange(k), support)
    assert np.all(w[outside] == 0.0), (support, w)
    assert isinstance(res.value, float) and isinstance(res.kkt_residual, float)
    assert abs(res.value - float(w @ G @ w)) <= ROUND_TOL * m
    assert res.value >= -ROUND_TOL * m
    assert 0.0 <= res.kkt_residual <= KKT_TOL, res.kkt_residual
    assert kkt_violation(G, w) <= KKT_TOL, kkt_violation(G, w)
    return w


def is_well_conditioned(G: np.ndarray, ratio: float = 1e-3) -> bool:
    m = float(np.max(np.diag(G)))
    return m > 0 and float(np.linalg.eigvalsh(G)[0]) >= ratio * m


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(case=cases())
def test_simplex_kkt_and_bounds(case, backend):
    _, G = case
    k = G.shape[0]
    Gt = torch.from_numpy(G.copy())
    res = mogd.min_norm(Gt, backend=backend)
    assert torch.equal(Gt, torch.from_numpy(G)), "min_norm must not modify its input"
    check_result(res, G)
    m = float(np.max(np.diag(G)))
    assert res.value <= float(np.min(np.diag(G))) + VALUE_TOL * m  # every vertex e_i
    assert res.value <= float(G.sum()) / k**2 + VALUE_TOL * m  # uniform weights


@SETTINGS
@given(case=cases(k_max=6))
def test_optimal_against_brute_force(case, backend):
    _, G = case
    m = float(np.max(np.diag(G)))
    ref_value, ref_w = brute_force_min_norm(G)
    res = mogd.min_norm(torch.from_numpy(G), backend=backend)
    w = check_result(res, G)
    assert res.value <= ref_value + VALUE_TOL * m
    assert ref_value <= res.value + VALUE_TOL * m  # the reference is optimal too
    delta = w - ref_w
    assert delta @ G @ delta <= 4 * VALUE_TOL * m  # same min-norm point d* = J^T w


@SETTINGS
@given(case=cases(), seed=st.integers(0, 2**32 - 1))
def test_permutation_equivariance(case, seed, backend):
    _, G = case
    k = G.shape[0]
    m = float(np.max(np.diag(G)))
    perm = np.random.default_rng(seed).permutation(k)
    w1 = check_result(mogd.min_norm(torch.from_numpy(G), backend=backend), G)
    Gp = np.ascontiguousarray(G[np.ix_(perm, perm)])
    res2 = mogd.min_norm(torch.from_numpy(Gp), backend=backend)
    w2p = check_result(res2, Gp)
    w2 = np.zeros(k)
    w2[perm] = w2p  # back to the original order: objective perm[i] got w2p[i]
    delta = w1 - w2
    assert delta @ G @ delta <= 4 * VALUE_TOL * m
    assert abs(float(w1 @ G @ w1) - res2.value) <= VALUE_TOL * m
    if is_well_conditioned(G):  # unique weights, and a linear solve of condition <= 1e3
        np.testing.assert_allclose(w1, w2, rtol=0, atol=1e-8)


@SETTINGS
@given(case=cases(scales=("unit", "mixed")), log_c=st.floats(-20, 20))
def test_scale_invariance(case, log_c, backend):
    _, G = case
    m = float(np.max(np.diag(G)))
    c = 10.0**log_c
    res = mogd.min_norm(torch.from_numpy(G), backend=backend)
    w = check_result(res, G)
    Gc = G * c
    res_c = mogd.min_norm(torch.from_numpy(Gc), backend=backend)
    wc = check_result(res_c, Gc)
    assert abs(res_c.value / c - res.value) <= VALUE_TOL * m
    delta = w - wc
    assert delta @ G @ delta <= 4 * VALUE_TOL * m
    if is_well_conditioned(G):
        np.testing.assert_allclose(w, wc, rtol=0, atol=1e-8)


@SETTINGS
@given(case=cases(k_min=2, k_max=2))
def test_k2_closed_form(case, backend):
    _, G = case
    m = float(np.max(np.diag(G)))
    cf_value, cf_w, den = closed_form_k2(G)
    bf_value, _ = brute_force_min_norm(G)
    assert abs(cf_value - bf_value) <= ROUND_TOL * m * 10  # the reference formula itself
    res = mogd.min_norm(torch.from_numpy(G), backend=backend)
    w = check_result(res, G)
    assert abs(res.value - cf_value) <= VALUE_TOL * m
    if den > 0 and den >= 1e-4 * m:  # t is then determined to ~eps * m / den
        np.testing.assert_allclose(w, cf_w, rtol=0, atol=1e-9)
    # The same problem with g2 duplicated (k = 3, the general path) has the same min-norm point.
    G3 = np.ascontiguousarray(G[np.ix_([0, 1, 1], [0, 1, 1])])
    w3 = check_result(mogd.min_norm(torch.from_numpy(G3), backend=backend), G3)
    assert abs(float(w3 @ G3 @ w3) - cf_value) <= VALUE_TOL * m
    merged = np.array([w3[0], w3[1] + w3[2]])
    delta = merged - cf_w
    assert delta @ G @ delta <= 4 * VALUE_TOL * m
    if den > 0 and den >= 1e-4 * m:
        np.testing.assert_allclose(merged, cf_w, rtol=0, atol=1e-9)


@SETTINGS
@given(case=cases())
def test_common_descent(case, backend):
    """<d, g_i> >= ||d||^2 for every objective i, with d = sum_i w_i g_i formed from J itself."""
    J, G = case
    m = float(np.max(np.diag(G)))
    w = check_result(mogd.min_norm(torch.from_numpy(G), backend=backend), G)
    d = w @ J
    assert np.all(J @ d >= d @ d - (KKT_TOL + ROUND_TOL) * m)


@SETTINGS
@given(
    k=st.integers(1, 64),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from(SCALES),
    how=st.sampled_from(["combination", "antipodal", "zero"]),
)
def test_zero_value_when_zero_in_hull(k, seed, scale, how, backend):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(k, 2 * k + 8))
    if how == "combination":
        J = hull_containing_zero(rng, k, n)
    else:
        J = rng.standard_normal((k, n)) + rng.standard_normal(n)
        i = int(rng.integers(0, k))
        if how == "zero":
            J[i] = 0.0
        elif k > 1:
            J[i] = -rng.uniform(0.1, 10.0) * J[(i + 1) % k]
        else:
            J[i] = 0.0
    G = gram64(apply_scale(rng, J, scale))
    m = float(np.max(np.diag(G)))
    res = mogd.min_norm(torch.from_numpy(G), backend=backend)
    check_result(res, G)
    assert res.value <= VALUE_TOL * m


@SETTINGS
@given(k=st.integers(1, 64), seed=st.integers(0, 2**32 - 1), scale=st.sampled_from(SCALES))
def test_positive_value_when_zero_outside_hull(k, seed, scale, backend):
    """All g_i have <g_i, u> >= margin > 0 for a unit u, so every d in the hull has
    ||d|| >= <d, u> >= margin: the value is at least margin^2."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(k + 1, 2 * k + 8))
    u = rng.standard_normal(n)
    u /= np.linalg.norm(u)
    noise = rng.standard_normal((k, n))
    noise -= np.outer(noise @ u, u)
    J = np.outer(rng.uniform(0.05, 2.0, size=k), u) + noise
    J = apply_scale(rng, J, scale)
    G = gram64(J)
    m = float(np.max(np.diag(G)))
    margin = float(np.min(J @ u))
    assert margin > 0
    res = mogd.min_norm(torch.from_numpy(G), backend=backend)
    check_result(res, G)
    assert res.value >= margin**2 * (1 - 1e-9) - ROUND_TOL * m


def test_k1(backend):
    for g in (0.0, 1e-30, 3.5, 1e30):
        G = np.array([[g]])
        res = mogd.min_norm(torch.from_numpy(G), backend=backend)
        check_result(res, G)
        assert res.weights.tolist() == [1.0] and tuple(res.support) == (0,)
        assert res.value == g


def test_all_zero_gram(backend):
    G = np.zeros((5, 5))
    res = mogd.min_norm(torch.from_numpy(G), backend=backend)
    check_result(res, G)
    assert res.value == 0.0


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, np.float32, np.float64]
)
def test_input_types(dtype, backend):
    rng = np.random.default_rng(0)
    for k in (2, 3, 5):
        A = rng.standard_normal((k, 3 * k))
        G = A @ A.T / (3 * k) + 0.3 * np.eye(k) + 0.5  # well conditioned, survives bf16 rounding
        G = (G + G.T) / 2
        if isinstance(dtype, torch.dtype):
            Gin = torch.from_numpy(G).to(dtype)
            exact = Gin.to(torch.float64).numpy()  # the values the solver actually received
        else:
            Gin = G.astype(dtype)
            exact = Gin.astype(np.float64)
        res = mogd.min_norm(Gin, backend=backend)
        w = check_result(res, exact)
        ref_value, ref_w = brute_force_min_norm(exact)
        m = float(np.max(np.diag(exact)))
        assert abs(res.value - ref_value) <= VALUE_TOL * m
        np.testing.assert_allclose(w, ref_w, rtol=0, atol=1e-8)


def test_float32_rounding_is_accepted(backend):
    """G = J J^T of a rank-deficient J formed in float32 is PSD only up to rounding (eigenvalues
    down to ~ -1e-7 max G_ii, entries asymmetric at the float32 level): it must be accepted, as
    float32 and converted to float64. The QP is then defined only up to that perturbation: moving G
    by E changes (Gw)_i - w^T G w by at most 2 ||E||, so optimality is judged to 2 |lambda_min|."""
    rng = np.random.default_rng(1)
    saw_negative = False
    for trial in range(20):
        k = 3 + trial % 10
        J = torch.from_numpy(rng.standard_normal((k, 2)) @ rng.standard_normal((2, 257))).float()
        J[0] = J[1]  # exact duplicate as well
        G32 = J @ J.T
        Gs = ((G32.double() + G32.double().T) / 2).numpy()
        m = float(np.max(np.diag(Gs)))
        lam_min = float(np.linalg.eigvalsh(Gs)[0])
        saw_negative |= lam_min < -1e-9 * m
        tol = KKT_TOL + 2 * max(0.0, -lam_min) / m
        for Gin in (G32, G32.double()):
            res = mogd.min_norm(Gin, backend=backend)
            w = res.weights.numpy()
            assert np.all(w >= 0) and abs(w.sum() - 1) <= 1e-12
            assert np.isfinite(res.value) and res.value >= -tol * m
            assert 0.0 <= res.kkt_residual <= tol
            assert kkt_violation(Gs, w) <= tol
            assert res.value <= float(np.min(np.diag(Gs))) + 2 * tol * m
    assert saw_negative, "the generator must produce clearly negative rounding eigenvalues"


def _indefinite(k: int, neg: float) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(k).standard_normal((k, k)))
    eig = np.ones(k)
    eig[-1] = neg
    return (q * eig) @ q.T


@pytest.mark.parametrize(
    "G",
    [
        np.zeros((2, 3)),  # not square
        np.ones(4),  # 1-D
        np.ones((1, 2, 2)),  # 3-D
        np.zeros((0, 0)),  # no objectives
        np.array([[1.0, 0.5], [0.0, 1.0]]),  # not symmetric
        np.array([[1.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.1, 1.0]]),  # not symmetric
        np.array([[np.nan, 0.0], [0.0, 1.0]]),
        np.array([[1.0, np.inf], [np.inf, 1.0]]),
        np.array([[1.0, 0.0], [0.0, -np.inf]]),
        np.array([[1.0, 2.0], [2.0, 1.0]]),  # eigenvalue -1
        np.array([[-1.0, 0.0], [0.0, 1.0]]),  # negative diagonal
        np.array([[-1e-3]]),  # k = 1, negative
        _indefinite(4, -0.01),  # eigenvalue -1% of the largest
        _indefinite(8, -0.3),
    ],
)
def test_bad_input_raises(G, backend):
    with pytest.raises(ValueError):
        mogd.min_norm(torch.from_numpy(G), backend=backend)
    with pytest.raises(ValueError):
        mogd.min_norm(G, backend=backend)


def test_backend_argument():
    with pytest.raises(ValueError, match="backend"):
        mogd.min_norm(np.eye(3), backend="fortran")


def test_non_contiguous_input(backend):
    """A transposed or strided view is read as the matrix it shows."""
    rng = np.random.default_rng(3)
    J = rng.standard_normal((6, 9)) + rng.standard_normal(9)
    big = np.zeros((12, 12))
    big[::2, ::2] = gram64(J)
    for Gin in (torch.from_numpy(big)[::2, ::2], torch.from_numpy(gram64(J)).T, big[::2, ::2].T):
        G = np.ascontiguousarray(Gin.numpy() if isinstance(Gin, torch.Tensor) else Gin)
        w = check_result(mogd.min_norm(Gin, backend=backend), G)
        ref_value, _ = brute_force_min_norm(G)
        assert abs(float(w @ G @ w) - ref_value) <= VALUE_TOL * float(np.max(np.diag(G)))


def test_numba_is_imported_lazily():
    """`import mogd` and k = 2 never import numba (slow to import); MOGD_SOLVER=numpy keeps the
    k > 2 solve on NumPy, and asking for the compiled path loads it."""
    pytest.importorskip("numba")
    code = (
        "import sys, numpy as np, mogd\n"
        "assert 'numba' not in sys.modules\n"
        "mogd.min_norm(np.eye(2)); mogd.min_norm(np.eye(5))\n"
        "assert 'numba' not in sys.modules\n"
        "mogd.min_norm(np.eye(5), backend='numba')\n"
        "assert 'numba' in sys.modules\n"
    )
    env = {**os.environ, "MOGD_SOLVER": "numpy"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)


# ---------------------------------------------------------------------------------------------
# The on-device solve (tensor operations only): the same certificate as the host solver
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(case=cases(k_max=8), mask_seed=st.integers(0, 2**32 - 1))
def test_device_solve_meets_the_host_certificate(case, mask_seed):
    """min_norm_masked on every adversarial family (rank-deficient, duplicated, antipodal, zero rows,
    scales 1e-30..1e30), over a random non-empty subset of the objectives: simplex over the subset,
    an independent KKT certificate <= 1e-9 on the sub-problem, and the host solver's value and
    min-norm point (the host solver, float64 NumPy/LAPACK, is the reference)."""
    from mogd.device_solve import min_norm_masked

    _, G = case
    k = G.shape[0]
    rng = np.random.default_rng(mask_seed)
    mask = rng.random(k) < 0.7
    mask[int(rng.integers(0, k))] = True
    idx = np.flatnonzero(mask)
    sub = np.ascontiguousarray(G[np.ix_(idx, idx)])
    if np.max(np.diag(sub)) <= 0:
        return  # all-zero sub-problem: MOGD never hands it over (zero rows are masked out)
    w_t, kkt = min_norm_masked(torch.from_numpy(G), torch.from_numpy(mask))
    w = w_t.numpy()
    assert np.all(w >= 0) and np.all(w[~mask] == 0) and abs(w.sum() - 1) <= 1e-12
    m = float(np.max(np.diag(sub)))
    assert float(kkt) <= KKT_TOL and kkt_violation(sub, w[idx]) <= KKT_TOL
    ref = mogd.min_norm(torch.from_numpy(sub))
    assert abs(float(w[idx] @ sub @ w[idx]) - ref.value) <= 2 * VALUE_TOL * m
    delta = w[idx] - ref.weights.numpy()
    assert delta @ sub @ delta <= 8 * VALUE_TOL * m  # the same min-norm point d*


def test_device_solve_beyond_max_k_uses_the_host_solver():
    from mogd.device_solve import MAX_DEVICE_K, min_norm_masked

    rng = np.random.default_rng(5)
    J = rng.standard_normal((MAX_DEVICE_K + 3, 20)) + rng.standard_normal(20)
    G = gram64(J)
    mask = np.ones(G.shape[0], dtype=bool)
    mask[2] = False
    w, kkt = min_norm_masked(torch.from_numpy(G), torch.from_numpy(mask))
    idx = np.flatnonzero(mask)
    sub = G[np.ix_(idx, idx)]
    assert w[2] == 0 and float(kkt) <= KKT_TOL
    assert kkt_violation(sub, w.numpy()[idx]) <= KKT_TOL
