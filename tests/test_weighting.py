"""The weightings (maps Gram -> weights on the raw gradients, d = sum_i w_i g_i; DESIGN.md §1):
MGDA, GAPO(p, update) (Li et al. 2025, Eq. 6-7 and App. B Eq. 17), PGAPO(preference) (Eq. 8) and
Linear, checked against a float64 reference written here and against the paper's Theorems 3.2-3.3.

n_i = sqrt(G_ii), D = diag(n_i^-p), G~ = D G D; alpha = argmin_{simplex} a^T G~ a. GAPO's weights
are alpha_i / n_i^p for update="rescaled" and alpha for update="raw". Tolerances as in
test_solver.py: the KKT residual bound 1e-9 (relative to the max diagonal of the QP's matrix) bounds
the suboptimality by 2e-9 and the squared distance of directions by that as well.
"""

import itertools
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import brute_force_min_norm as ref_min_norm
from reference import kkt_violation

import mogd

KKT_TOL = 1e-9
VALUE_TOL = 2 * KKT_TOL + 1e-12
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
P_VALUES = (0.0, 0.5, 1.0, 2.0, 3.0)


# ---------------------------------------------------------------------------------------------
# Independent float64 references (the min-norm QP itself: tests/reference.py)
# ---------------------------------------------------------------------------------------------


def rescaled_gram(G: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """(G~ = D G D with D = diag(n_i^-p), n) for nonzero rows; rows with n_i = 0 are not handled."""
    n = np.sqrt(np.diag(G))
    D = n**-p
    return G * np.outer(D, D), n


def random_gram(rng, k, n=None, scale=0.0, mixed=0.0, common=1.0):
    n = n or int(rng.integers(k, 2 * k + 8))
    J = rng.standard_normal((k, n)) + common * rng.standard_normal(n)
    J *= 10.0 ** (scale + rng.uniform(-mixed, mixed, size=(k, 1)))
    G = J @ J.T
    return J, (G + G.T) / 2


@st.composite
def grams(draw, k_min=1, k_max=6):
    """Nonzero-diagonal Gram matrices: generic, rank-deficient, duplicated, antipodal, scaled."""
    k = draw(st.integers(k_min, k_max))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["generic", "lowrank", "duplicate", "antipodal"]))
    n = int(rng.integers(k, 2 * k + 8))
    J = rng.standard_normal((k, n)) + rng.choice([0.0, 1.0, 3.0]) * rng.standard_normal(n)
    if kind == "lowrank":
        r = int(rng.integers(1, k + 1))
        J = rng.standard_normal((k, r)) @ rng.standard_normal((r, n))
    elif kind == "duplicate":
        J = J[rng.integers(0, max(1, k - 1), size=k)]
    elif kind == "antipodal" and k > 1:
        J[1] = -rng.uniform(0.1, 10.0) * J[0]
    J *= 10.0 ** (draw(st.floats(-15, 15)) / 2 + rng.uniform(-3, 3, size=(k, 1)))
    G = J @ J.T
    return J, (G + G.T) / 2


def check_weights_tensor(w, k):
    assert isinstance(w, torch.Tensor) and w.dtype == torch.float64 and w.device.type == "cpu"
    assert tuple(w.shape) == (k,)
    assert torch.isfinite(w).all(), w
    return w.numpy()


# ---------------------------------------------------------------------------------------------
# MGDA and GAPO against the reference
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(case=grams(), p=st.sampled_from(P_VALUES), update=st.sampled_from(["rescaled", "raw"]))
def test_gapo_matches_reference(case, p, update):
    _, G = case
    k = G.shape[0]
    res = mogd.GAPO(p=p, update=update).solve(torch.from_numpy(G))
    w = check_weights_tensor(res.weights, k)
    if k == 1:
        assert w.tolist() == [1.0]
        return
    Gt, n = rescaled_gram(G, p)
    mt = float(np.max(np.diag(Gt)))
    ref_v, ref_a = ref_min_norm(Gt)
    alpha = check_weights_tensor(res.alpha, k)
    assert np.all(alpha >= 0) and abs(alpha.sum() - 1) <= 1e-12
    assert res.kkt_residual is not None and 0 <= res.kkt_residual <= KKT_TOL
    assert kkt_violation(Gt, alpha) <= KKT_TOL
    assert abs(float(alpha @ Gt @ alpha) - ref_v) <= VALUE_TOL * mt
    delta = alpha - ref_a
    assert delta @ Gt @ delta <= 4 * VALUE_TOL * mt  # same min-norm point of the g~_i
    if float(np.linalg.eigvalsh(Gt)[0]) >= 1e-3 * mt:  # alpha unique and well determined
        np.testing.assert_allclose(alpha, ref_a, rtol=0, atol=1e-8)
    expected = alpha / n**p if update == "rescaled" else alpha
    np.testing.assert_allclose(w, expected, rtol=1e-12, atol=0)


@SETTINGS
@given(case=grams())
def test_mgda_is_min_norm_and_gapo_p0(case):
    _, G = case
    k = G.shape[0]
    m = float(np.max(np.diag(G)))
    res = mogd.MGDA().solve(torch.from_numpy(G))
    w = check_weights_tensor(res.weights, k)
    ref_v, ref_a = ref_min_norm(G)
    assert np.all(w >= 0) and abs(w.sum() - 1) <= 1e-12
    assert abs(float(w @ G @ w) - ref_v) <= VALUE_TOL * m
    assert kkt_violation(G, w) <= KKT_TOL
    if res.alpha is not None:
        np.testing.assert_array_equal(res.alpha.numpy(), w)  # MGDA: weights are alpha
    for update in ("rescaled", "raw"):
        w0 = check_weights_tensor(mogd.GAPO(p=0, update=update)(torch.from_numpy(G)), k)
        delta = w0 - w
        assert delta @ G @ delta <= 4 * VALUE_TOL * m  # the same direction d
        assert abs(float(w0 @ G @ w0) - float(w @ G @ w)) <= VALUE_TOL * m
        if float(np.linalg.eigvalsh(G)[0]) >= 1e-3 * m:
            np.testing.assert_allclose(w0, w, rtol=0, atol=1e-8)


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    log_scales=st.tuples(st.floats(-12, 12), st.floats(-12, 12)),
    n=st.integers(2, 50),
)
def test_gapo_p1_k2_is_half_half(seed, log_scales, n):
    """For two unit-normalised gradients the min-norm point is their midpoint (cos < 1)."""
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((2, n)) * 10.0 ** np.array(log_scales)[:, None]
    G = J @ J.T
    G = (G + G.T) / 2
    norms = np.sqrt(np.diag(G))
    if G[0, 1] / (norms[0] * norms[1]) > 1 - 1e-3:
        return  # (near-)parallel: every alpha is optimal
    res = mogd.GAPO(p=1).solve(torch.from_numpy(G))
    np.testing.assert_allclose(res.alpha.numpy(), [0.5, 0.5], rtol=0, atol=1e-9)
    np.testing.assert_allclose(res.weights.numpy(), 0.5 / norms, rtol=1e-9)
    raw = mogd.GAPO(p=1, update="raw")(torch.from_numpy(G))
    np.testing.assert_allclose(raw.numpy(), [0.5, 0.5], rtol=0, atol=1e-9)


def interior_case(rng, k, p):
    """Gradients whose rescaled min-norm point is a known interior alpha. Build g~_i = u + v_i with
    v_i orthogonal to u and sum_i alpha_i v_i = 0: then sum_i alpha_i g~_i = u and
    <u, g~_i> = ||u||^2 for all i, the KKT conditions with every alpha_i > 0. The raw gradients
    are g_i = n_i^p g~_i with n_i = ||g_i||, i.e. n_i^(1-p) = ||g~_i|| (p = 1: any n_i, unit g~_i)."""
    dim = k + 3
    alpha = rng.dirichlet(np.ones(k)) * 0.8 + 0.2 / k
    u = rng.standard_normal(dim)
    u /= np.linalg.norm(u)
    v = rng.standard_normal((k, dim))
    v -= np.outer(v @ u, u)
    if p == 1.0:  # equal norms so that the g~_i are unit vectors: 0 = sum_{i<k} b_i v_i + s v_k
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        b = alpha[:-1]
        s = np.linalg.norm(b @ v[:-1])
        v[-1] = -(b @ v[:-1]) / s
        alpha = np.append(b, s) / (b.sum() + s)
        gt = 0.6 * u + 0.8 * v  # unit rows
        n = 10.0 ** rng.uniform(-2, 2, size=k)
    else:
        v -= alpha @ v
        gt = u + v
        n = np.linalg.norm(gt, axis=1) ** (1.0 / (1.0 - p))
    J = gt * (n**p)[:, None]
    G = J @ J.T
    return (G + G.T) / 2, n, alpha


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_theorem_3_3_progress_ratio(p, k):
    """Paper Thm 3.3: for interior alpha, <d, g_i> / <d, g_j> = n_i^p / n_j^p (d = sum w_i g_i)."""
    rng = np.random.default_rng(1000 * k + int(10 * p))
    for _ in range(5):
        G, n, alpha = interior_case(rng, k, p)
        Gt, n_check = rescaled_gram(G, p)
        np.testing.assert_allclose(n_check, n, rtol=1e-12)
        assert kkt_violation(Gt, alpha) <= 1e-12  # the construction is right
        res = mogd.GAPO(p=p).solve(torch.from_numpy(G))
        np.testing.assert_allclose(res.alpha.numpy(), alpha, rtol=0, atol=1e-8)
        progress = G @ res.weights.numpy()  # <d, g_i>
        for i, j in itertools.permutations(range(k), 2):
            assert progress[i] / progress[j] == pytest.approx(n[i] ** p / n[j] ** p, rel=1e-6)


@SETTINGS
@given(
    case=grams(k_min=2, k_max=24),
    p=st.sampled_from(P_VALUES),
)
def test_theorem_3_2_common_descent(case, p):
    """Paper Thm 3.2: <d, g~_i> >= ||d||^2 for every i, where d = sum_i w_i g_i = sum alpha_i g~_i
    (update="rescaled"); with the gradients themselves: every objective has <d, g_i> >= 0.
    (k = 1 is excluded: there the weight is 1 by contract, d = g, not g~.)"""
    J, G = case
    w = mogd.GAPO(p=p)(torch.from_numpy(G)).numpy()
    d = w @ J
    n = np.linalg.norm(J, axis=1)
    progress = J @ d
    scaled = progress / n**p  # <d, g~_i>
    Gt, _ = rescaled_gram(G, p)
    assert np.all(scaled >= d @ d - (KKT_TOL + 1e-12) * np.max(np.diag(Gt)))
    assert np.all(progress >= -(KKT_TOL + 1e-12) * np.max(np.diag(Gt)) * n**p)


# ---------------------------------------------------------------------------------------------
# P-GAPO and Linear
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "preference,normalised",
    [
        ([0.5, 0.5], [0.5, 0.5]),
        ([0.2, 0.8], [0.2, 0.8]),
        ([2.0, 1.0, 1.0], [0.5, 0.25, 0.25]),  # normalised to the simplex
        (torch.tensor([3.0, 1.0]), [0.75, 0.25]),
        (np.array([1e-8, 1.0]), [1e-8 / (1 + 1e-8), 1 / (1 + 1e-8)]),
    ],
)
def test_pgapo_weights(preference, normalised):
    rng = np.random.default_rng(3)
    k = len(normalised)
    for scale in (-10.0, 0.0, 10.0):
        _, G = random_gram(rng, k, scale=scale, mixed=2.0)
        w = check_weights_tensor(mogd.PGAPO(preference=preference)(torch.from_numpy(G)), k)
        np.testing.assert_allclose(w, np.array(normalised) / np.sqrt(np.diag(G)), rtol=1e-12)


@pytest.mark.parametrize(
    "preference",
    [[1.0, 0.0], [1.0, -0.5], [float("nan"), 1.0], [float("inf"), 1.0], [], [[0.5, 0.5]]],
)
def test_pgapo_bad_preference(preference):
    G = torch.eye(2, dtype=torch.float64)
    with pytest.raises(ValueError):
        mogd.PGAPO(preference=preference)(G)


def test_pgapo_wrong_length():
    with pytest.raises(ValueError):
        mogd.PGAPO(preference=[0.2, 0.3, 0.5])(torch.eye(2, dtype=torch.float64))


def test_linear():
    rng = np.random.default_rng(4)
    _, G = random_gram(rng, 3)
    res = mogd.Linear(weights=[2.0, 0.5, 1.0]).solve(torch.from_numpy(G))
    assert check_weights_tensor(res.weights, 3).tolist() == [2.0, 0.5, 1.0]  # d = sum c_i g_i
    assert res.alpha is None and res.kkt_residual is None
    with pytest.raises(ValueError):
        mogd.Linear(weights=[1.0, 1.0])(torch.from_numpy(G))
    with pytest.raises(ValueError):
        mogd.Linear(weights=[1.0, float("nan"), 1.0])(torch.from_numpy(G))


# ---------------------------------------------------------------------------------------------
# Edge cases: zero gradients, k = 1, input types, bad input, repr
# ---------------------------------------------------------------------------------------------


def _weightings(k):
    pref = np.arange(1.0, k + 1.0)
    return [mogd.MGDA(), mogd.PGAPO(preference=pref)] + [
        mogd.GAPO(p=p, update=u) for p in (0.0, 1.0, 2.0) for u in ("rescaled", "raw")
    ]


@SETTINGS
@given(case=grams(k_min=2, k_max=6), data=st.data())
def test_zero_gradient_gets_zero_weight(case, data):
    """An objective with an exactly zero gradient gets weight 0, no NaN, and the weights of the
    others are those of the problem without it (DESIGN.md §1)."""
    J, _ = case
    k = J.shape[0]
    zero = data.draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=k - 1, unique=True))
    J = J.copy()
    J[zero] = 0.0
    G = J @ J.T
    G = (G + G.T) / 2
    keep = [i for i in range(k) if i not in zero]
    Gr = np.ascontiguousarray(G[np.ix_(keep, keep)])
    for weighting in _weightings(k):
        res = weighting.solve(torch.from_numpy(G))
        w = check_weights_tensor(res.weights, k)
        assert np.all(w[zero] == 0.0), (weighting, w)
        if res.alpha is not None:
            alpha = check_weights_tensor(res.alpha, k)
            assert np.all(alpha[zero] == 0.0) and abs(alpha.sum() - 1) <= 1e-12
        wk = w[keep]
        if isinstance(weighting, mogd.PGAPO):
            pref = np.arange(1.0, k + 1.0)
            expected = (pref / pref.sum())[keep] / np.sqrt(np.diag(Gr))
            np.testing.assert_allclose(wk, expected, rtol=1e-12)
            continue
        p = 0.0 if isinstance(weighting, mogd.MGDA) else weighting.p
        Gt, n = rescaled_gram(Gr, p)
        mt = float(np.max(np.diag(Gt)))
        alpha_k = wk * n**p if getattr(weighting, "update", "raw") == "rescaled" else wk
        if len(keep) == 1:
            np.testing.assert_allclose(alpha_k, [1.0], rtol=1e-12)
            continue
        ref_v, ref_a = ref_min_norm(Gt)
        assert abs(alpha_k.sum() - 1) <= 1e-12
        assert abs(float(alpha_k @ Gt @ alpha_k) - ref_v) <= VALUE_TOL * mt
        delta = alpha_k - ref_a
        assert delta @ Gt @ delta <= 4 * VALUE_TOL * mt


def test_all_zero_gradients():
    G = torch.zeros(3, 3, dtype=torch.float64)
    for weighting in _weightings(3):
        w = check_weights_tensor(weighting(G), 3)
        assert np.all(w == 0.0), (weighting, w)


def test_single_objective_is_identity():
    for g in (1e-20, 0.25, 4.0, 1e20):
        G = torch.tensor([[g]], dtype=torch.float64)
        for weighting in _weightings(1):
            assert check_weights_tensor(weighting(G), 1).tolist() == [1.0], weighting


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, np.float64])
def test_input_types_and_call(dtype):
    rng = np.random.default_rng(5)
    _, G = random_gram(rng, 3)
    Gin = torch.from_numpy(G).to(dtype) if isinstance(dtype, torch.dtype) else G.astype(dtype)
    for weighting in _weightings(3):
        res = weighting.solve(Gin)
        w = weighting(Gin)
        check_weights_tensor(w, 3)
        assert torch.equal(w, res.weights)


@pytest.mark.parametrize(
    "G",
    [np.ones((2, 3)), np.array([[1.0, np.nan], [np.nan, 1.0]]), np.array([[1.0, 2.0], [2.0, 1.0]])],
)
@pytest.mark.parametrize("make", [mogd.MGDA, lambda: mogd.GAPO(p=1), lambda: mogd.GAPO(p=2)])
def test_bad_gram_raises(G, make):
    with pytest.raises(ValueError):
        make()(torch.from_numpy(G))


@pytest.mark.parametrize(
    "kwargs", [{"p": -0.5}, {"p": -1}, {"p": math.nan}, {"update": "scaled"}, {"update": ""}]
)
def test_gapo_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        mogd.GAPO(**kwargs)


def test_repr_shows_hyperparameters():
    assert repr(mogd.MGDA()) == "MGDA()"
    r = repr(mogd.GAPO(p=2, update="raw"))
    assert r.startswith("GAPO(") and re.search(r"p=2(\.0)?\b", r) and "raw" in r
    r = repr(mogd.GAPO())
    assert re.search(r"p=1(\.0)?\b", r) and "rescaled" in r
    r = repr(mogd.PGAPO(preference=[1.0, 3.0]))
    assert r.startswith("PGAPO(") and "preference" in r
    assert ("0.25" in r and "0.75" in r) or ("1.0" in r and "3.0" in r)
    r = repr(mogd.Linear(weights=[2.0, 0.5]))
    assert r.startswith("Linear(") and "2.0" in r and "0.5" in r


# ---------------------------------------------------------------------------------------------
# solve_tensor: the same maps by tensor operations on G's device (no host synchronisation)
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(case=grams(k_max=8), p=st.sampled_from(P_VALUES), zero_seed=st.integers(0, 2**32 - 1))
def test_solve_tensor_equals_the_host_map(case, p, zero_seed):
    """Every weighting's tensor path against its host path (the float64 reference), with zero
    rows mixed in: the same weights where the QP's answer is unique, the same min-norm point of the
    g~_i always (independent KKT certificate on G~ over the nonzero objectives)."""
    J, _ = case
    k = J.shape[0]
    J = J.copy()
    rng = np.random.default_rng(zero_seed)
    if k > 1 and rng.random() < 0.4:
        J[rng.integers(0, k)] = 0.0
    G = (J @ J.T + (J @ J.T).T) / 2
    Gt = torch.from_numpy(G)
    keep = np.flatnonzero(np.diag(G) > 0)
    for weighting in [*_weightings(k), mogd.GAPO(p=p), mogd.GAPO(p=p, update="raw")]:
        host, dev = weighting.solve(Gt), weighting.solve_tensor(Gt)
        w_h, w_d = res_np(host.weights), res_np(dev.weights)
        assert (host.alpha is None) == (dev.alpha is None)
        if host.alpha is None or k == 1 or keep.size == 0:
            np.testing.assert_allclose(w_d, w_h, rtol=1e-12, atol=0)
            continue
        alpha = res_np(dev.alpha)
        assert np.all(alpha >= 0) and np.all(alpha[np.diag(G) == 0] == 0)
        assert abs(alpha.sum() - 1) <= 1e-12 and float(dev.kkt_residual) <= KKT_TOL
        pw = 0.0 if isinstance(weighting, mogd.MGDA) else weighting.p
        Gr, n = rescaled_gram(np.ascontiguousarray(G[np.ix_(keep, keep)]), pw)
        mt = float(np.max(np.diag(Gr)))
        assert kkt_violation(Gr, alpha[keep]) <= KKT_TOL
        delta = alpha[keep] - res_np(host.alpha)[keep]
        assert delta @ Gr @ delta <= 8 * VALUE_TOL * mt
        if float(np.linalg.eigvalsh(Gr)[0]) >= 1e-3 * mt:  # unique, well-determined weights
            np.testing.assert_allclose(w_d, w_h, rtol=1e-7, atol=0)


def res_np(t):
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    return t.numpy()
