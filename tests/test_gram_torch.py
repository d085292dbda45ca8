"""mogd.gram and mogd.combine on the torch backend against float64 references (DESIGN.md §4).

gram: G = J J^T as float64 [k, k]; accuracy is measured per entry relative to the Cauchy-Schwarz
scale sqrt(G_ii G_jj) (off-diagonal entries may cancel to ~0). combine: d = sum_i w_i g_i in the
gradients' dtype with float32 arithmetic; its error bound is the float32 one, k u32 sum_i |w_i g_i|,
plus the final rounding to the output dtype.
"""

import numpy as np
import pytest
import torch

import mogd

FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# Entry-wise error allowed relative to sqrt(G_ii G_jj). Half inputs have products exact in float32,
# so the float32 accumulation (required at least) is the only error; half accumulation would be
# ~1e-2 off.
GRAM_TOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-5, torch.float16: 1e-5}
UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.bfloat16: 2.0**-8,
    torch.float16: 2.0**-11,
}


def ref_gram(J: torch.Tensor) -> torch.Tensor:
    """float64 J J^T of the exact input values, in chunks to bound memory."""
    k, n = J.shape
    G = torch.zeros(k, k, dtype=torch.float64)
    for s in range(0, n, 1 << 22):
        c = J[:, s : s + (1 << 22)].to(torch.float64)
        G += c @ c.T
    return G


def gram_error(G: torch.Tensor, ref: torch.Tensor) -> float:
    d = ref.diagonal().clamp_min(0).sqrt()
    scale = torch.outer(d, d)
    err = (G - ref).abs()
    zero = scale == 0
    assert torch.all(err[zero] == 0), "entries of zero rows must be exactly zero"
    return float((err[~zero] / scale[~zero]).max()) if (~zero).any() else 0.0


def make_j(k: int, n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # A shared positive mean makes the sums long and one-signed: the hard case for float32.
    J = torch.randn(k, n, generator=g) + torch.linspace(0.0, 1.0, k)[:, None]
    return J.to(dtype)


def check_gram(G: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype):
    k = ref.shape[0]
    assert isinstance(G, torch.Tensor) and G.dtype == torch.float64 and G.device.type == "cpu"
    assert tuple(G.shape) == (k, k)
    assert torch.isfinite(G).all()
    err = gram_error(G, ref)
    assert err <= GRAM_TOL[dtype], err


def split_params(J: torch.Tensor, shapes) -> list[list[torch.Tensor]]:
    """k lists of per-parameter tensors (copies, contiguous) holding the rows of J."""
    out = []
    for row in J:
        params, s = [], 0
        for shape in shapes:
            size = int(np.prod(shape)) if len(shape) else 1
            params.append(row[s : s + size].reshape(shape).clone())
            s += size
        assert s == row.numel()
        out.append(params)
    return out


# ---------------------------------------------------------------------------------------------
# gram
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [0, 1, 7, 1001, 65537])
def test_gram_tensor(dtype, k, n):
    J = make_j(k, n, dtype, seed=n + k)
    G = mogd.gram(J, backend="torch")
    check_gram(G, ref_gram(J), dtype)
    if n == 0:
        assert torch.equal(G, torch.zeros(k, k, dtype=torch.float64))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_gram_many_blocks(dtype):
    J = make_j(3, 3 * (1 << 20) + 13, dtype, seed=11)  # several blocks of any sensible size
    check_gram(mogd.gram(J, backend="torch"), ref_gram(J), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_gram_list(dtype):
    shapes = [(3, 4), (5,), (2, 3, 2), (1,), (1 << 18,), (0, 3), (7, 1001)]
    n = 12 + 5 + 12 + 1 + (1 << 18) + 0 + 7007
    for k in (1, 2, 4):
        J = make_j(k, n, dtype, seed=k)
        G = mogd.gram(split_params(J, shapes), backend="torch")
        check_gram(G, ref_gram(J), dtype)


def test_gram_list_with_scalar_parameter():
    """A 0-d parameter (e.g. a learned temperature) is a valid per-parameter gradient."""
    J = make_j(3, 21, torch.float32)
    G = mogd.gram(split_params(J, [(), (4, 5)]), backend="torch")
    check_gram(G, ref_gram(J), torch.float32)


def test_gram_row_views_of_a_larger_buffer():
    """Rows with unit stride but a row stride larger than n (a slice of a gradient bank)."""
    bank = make_j(4, 5000, torch.float32)
    J = bank[:, 17:4017]
    assert J.stride() == (5000, 1)
    check_gram(mogd.gram(J, backend="torch"), ref_gram(J.contiguous()), torch.float32)


def test_gram_non_unit_stride_is_correct_or_rejected():
    J = make_j(6, 2000, torch.float32)[::2, ::2]  # last-dim stride 2
    try:
        G = mogd.gram(J, backend="torch")
    except (ValueError, TypeError):
        return
    check_gram(G, ref_gram(J.contiguous()), torch.float32)


def test_gram_zero_rows_and_scales():
    # Rows 1e-12 and 1e12: squares and block sums stay inside float32's range (a float32
    # accumulator, which the design allows, overflows near |g| ~ 1e17 at this n).
    J = make_j(4, 100003, torch.float32)
    J[1] = 0.0
    J[2] *= 1e-12
    J[3] *= 1e12
    check_gram(mogd.gram(J, backend="torch"), ref_gram(J), torch.float32)


def test_gram_fp32_large_n_accuracy():
    """Relative error <= 1e-6 against float64 at n = 5e7, k = 4, float32 (plain float32
    J @ J.T is ~1e-2 off here). One test, ~0.8 GB of input."""
    k, n = 4, 50_000_000
    g = torch.Generator().manual_seed(7)
    J = torch.randn(k, n, generator=g)
    J[:2] += 1.0  # long one-signed sums
    J[3] = J[3].abs()
    ref = ref_gram(J)
    G = mogd.gram(J, backend="torch")
    check_gram(G, ref, torch.float32)
    rel_diag = ((G.diagonal() - ref.diagonal()).abs() / ref.diagonal()).max()
    assert rel_diag <= 1e-6, rel_diag


@pytest.mark.parametrize(
    "bad",
    [
        lambda: torch.zeros(3, 4, dtype=torch.int64),
        lambda: torch.zeros(3, 4, dtype=torch.bool),
        lambda: torch.zeros(3, 4, dtype=torch.complex64),
        lambda: torch.zeros(5),  # 1-D
        lambda: torch.zeros(2, 3, 4),  # 3-D
        lambda: [[torch.zeros(3)], [torch.zeros(4)]],  # shapes differ across objectives
        lambda: [[torch.zeros(3), torch.zeros(2)], [torch.zeros(3)]],  # parameter counts differ
        lambda: [[torch.zeros(3, dtype=torch.int32)], [torch.zeros(3, dtype=torch.int32)]],
    ],
)
def test_gram_bad_input(bad):
    with pytest.raises((ValueError, TypeError)):
        mogd.gram(bad(), backend="torch")


def test_gram_bad_backend():
    with pytest.raises(ValueError):
        mogd.gram(torch.zeros(2, 3), backend="cuda-magic")


# ---------------------------------------------------------------------------------------------
# combine
# ---------------------------------------------------------------------------------------------


def ref_combine(J: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return w.to(torch.float64) @ J.to(torch.float64)


def check_combine(d: torch.Tensor, J: torch.Tensor, w: torch.Tensor, dtype: torch.dtype):
    k, n = J.shape
    assert isinstance(d, torch.Tensor) and d.dtype == dtype and tuple(d.shape) == (n,)
    ref = ref_combine(J, w)
    # float32 arithmetic (weights rounded to float32 too), then one rounding to the output dtype.
    mag = w.to(torch.float64).abs() @ J.to(torch.float64).abs()
    u = UNIT_ROUNDOFF[dtype]
    tol = (k + 2) * 2.0**-24 * mag * (1 + u) + u * ref.abs()
    if dtype == torch.float16:
        tol = tol + 2.0**-25  # subnormal spacing
    err = (d.to(torch.float64) - ref).abs()
    assert torch.all(err <= tol), float((err - tol).max())


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [0, 1, 7, 1001, 200_003])
def test_combine_tensor(dtype, k, n):
    J = make_j(k, n, dtype, seed=n + 2 * k)
    w = torch.linspace(-1.5, 2.0, k, dtype=torch.float64)  # negative and positive weights
    if k > 2:
        w[1] = 0.0
    before = J.clone()
    d = mogd.combine(J, w, backend="torch")
    assert torch.equal(J, before), "combine must not modify its input without out="
    check_combine(d, J, w, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_combine_many_blocks(dtype):
    J = make_j(3, 3 * (1 << 20) + 13, dtype, seed=12)
    w = torch.tensor([0.3, -1.1, 0.8], dtype=torch.float64)
    check_combine(mogd.combine(J, w, backend="torch"), J, w, dtype)


@pytest.mark.parametrize("wdtype", [torch.float64, torch.float32, torch.bfloat16])
def test_combine_weight_dtypes(wdtype):
    J = make_j(3, 4099, torch.float32)
    w = torch.tensor([0.25, 0.5, 0.25], dtype=wdtype)  # exact in every dtype
    check_combine(mogd.combine(J, w, backend="torch"), J, w.to(torch.float64), torch.float32)


def test_combine_zero_weights():
    J = make_j(3, 1000, torch.float32)
    d = mogd.combine(J, torch.zeros(3, dtype=torch.float64), backend="torch")
    assert torch.equal(d, torch.zeros(1000))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("row", [0, 2])
def test_combine_out_aliases_a_row(dtype, row):
    J = make_j(3, 200_003, dtype, seed=row)
    w = torch.tensor([0.7, -0.2, 1.3], dtype=torch.float64)
    original = J.clone()
    out = mogd.combine(J, w, out=J[row], backend="torch")
    assert out.data_ptr() == J[row].data_ptr()
    check_combine(J[row], original, w, dtype)
    others = [i for i in range(3) if i != row]
    assert torch.equal(J[others], original[others])


def test_combine_out_separate_buffer():
    J = make_j(4, 5001, torch.float32)
    w = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    out = torch.full((5001,), float("nan"))
    res = mogd.combine(J, w, out=out, backend="torch")
    assert res.data_ptr() == out.data_ptr()
    check_combine(out, J, w, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_combine_list(dtype):
    shapes = [(3, 4), (5,), (2, 3, 2), (1,), (1 << 16,), (7, 101)]
    n = 12 + 5 + 12 + 1 + (1 << 16) + 707
    J = make_j(3, n, dtype)
    grads = split_params(J, shapes)
    w = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    out = mogd.combine(grads, w, backend="torch")
    assert isinstance(out, list) and len(out) == len(shapes)
    assert [tuple(t.shape) for t in out] == shapes
    check_combine(torch.cat([t.reshape(-1) for t in out]), J, w, dtype)
    # out= a row of the bank (objective 0's own tensors), written in place.
    targets = grads[0]
    ptrs = [t.data_ptr() for t in targets]
    res = mogd.combine(grads, w, out=targets, backend="torch")
    assert [t.data_ptr() for t in targets] == ptrs
    if res is not None:
        assert all(a.data_ptr() == b.data_ptr() for a, b in zip(res, targets, strict=True))
    check_combine(torch.cat([t.reshape(-1) for t in targets]), J, w, dtype)


@pytest.mark.parametrize(
    "grads,weights",
    [
        (lambda: torch.zeros(3, 10), lambda: torch.ones(2)),  # wrong weights length
        (lambda: torch.zeros(3, 10), lambda: torch.ones(4)),
        (lambda: torch.zeros(3, 10, dtype=torch.int64), lambda: torch.ones(3)),
        (lambda: torch.zeros(10), lambda: torch.ones(1)),  # grads 1-D
        (lambda: [[torch.zeros(3)], [torch.zeros(4)]], lambda: torch.ones(2)),
        (lambda: [[torch.zeros(3)], [torch.zeros(3)]], lambda: torch.ones(3)),
    ],
)
def test_combine_bad_input(grads, weights):
    with pytest.raises((ValueError, TypeError)):
        mogd.combine(grads(), weights(), backend="torch")


@pytest.mark.parametrize(
    "out",
    [lambda: torch.zeros(9), lambda: torch.zeros(10, dtype=torch.int32), lambda: torch.zeros(2, 5)],
)
def test_combine_bad_out(out):
    with pytest.raises((ValueError, TypeError)):
        mogd.combine(torch.zeros(3, 10), torch.ones(3), out=out(), backend="torch")
