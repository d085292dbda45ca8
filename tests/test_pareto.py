"""mogd.pareto against hand-checked dominance and a brute-force (coordinate-compressed grid)
hypervolume, independent of moocore."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mogd.pareto import hypervolume, non_dominated, pareto_front


def grid_hypervolume(points, ref):
    """Exact dominated volume for maximisation: split space at every coordinate that occurs, and add
    each grid cell that lies inside some box [ref, p]. O(m^(d+1)); fine for tiny inputs."""
    points = np.asarray(points, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    d = ref.shape[0]
    axes = [
        np.unique(np.concatenate([[ref[j]], points[:, j][points[:, j] > ref[j]]])) for j in range(d)
    ]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        lo = np.array([axes[j][c] for j, c in enumerate(cell)])
        hi = np.array([axes[j][c + 1] for j, c in enumerate(cell)])
        if np.any(np.all(points >= hi, axis=1)):  # some box [ref, p] covers the whole cell
            total += float(np.prod(hi - lo))
    return total


def brute_non_dominated(points, signs):
    p = np.asarray(points) * signs
    m = len(p)
    return np.array(
        [not any(np.all(p[j] >= p[i]) and np.any(p[j] > p[i]) for j in range(m)) for i in range(m)],
        dtype=bool,
    )


def test_non_dominated_by_hand():
    pts = np.array(
        [
            [1.0, 5.0],  # front
            [2.0, 4.0],  # front
            [2.0, 3.0],  # dominated by [2, 4] (equal first, worse second)
            [4.0, 1.0],  # front
            [1.0, 1.0],  # dominated by everything above
            [2.0, 4.0],  # duplicate of a front point: kept
            [0.0, 5.0],  # dominated by [1, 5]
        ]
    )
    assert non_dominated(pts).tolist() == [True, True, False, True, False, True, False]
    # Minimising flips the picture: [1, 1] dominates all but [0, 5] (better in the first objective).
    expected_min = [False, False, False, False, True, False, True]
    assert non_dominated(pts, maximize=False).tolist() == expected_min
    # Mixed: maximise the first objective, minimise the second.
    assert np.flatnonzero(non_dominated(pts, maximize=[True, False])).tolist() == [3]


def test_pareto_front_sorted_and_merged():
    pts = torch.tensor([[2.0, 4.0], [4.0, 1.0], [1.0, 5.0], [2.0, 4.0], [1.0, 1.0]])
    front = pareto_front(pts)
    assert isinstance(front, np.ndarray) and front.dtype == np.float64
    np.testing.assert_array_equal(front, [[1.0, 5.0], [2.0, 4.0], [4.0, 1.0]])
    assert pareto_front(np.zeros((0, 3))).shape == (0, 3)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    m=st.integers(1, 40),
    d=st.integers(1, 4),
    flags=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_non_dominated_matches_brute_force(seed, m, d, flags):
    rng = np.random.default_rng(seed)
    pts = rng.integers(0, 5, size=(m, d)).astype(np.float64)  # small integers force ties
    maximize = flags[:d]
    signs = np.where(maximize, 1.0, -1.0)
    np.testing.assert_array_equal(non_dominated(pts, maximize), brute_non_dominated(pts, signs))
    front = pareto_front(pts, maximize)
    expected = np.unique(pts[brute_non_dominated(pts, signs)], axis=0)
    np.testing.assert_array_equal(front, expected)


def test_hypervolume_by_hand():
    # Staircase with steps (1, 3), (2, 2), (3, 1) above the origin: 3 + 2 + 1 = 6 unit squares.
    pts = [[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [1.0, 1.0]]
    assert hypervolume(pts, [0.0, 0.0]) == pytest.approx(6.0, rel=1e-15)
    # Minimisation with the mirrored data and reference.
    assert hypervolume(-np.array(pts), [0.0, 0.0], maximize=False) == pytest.approx(6.0)
    # Points that do not beat the reference in every objective add nothing.
    assert hypervolume([[5.0, -1.0], [1.0, 1.0]], [0.0, 0.0]) == pytest.approx(1.0)
    assert hypervolume(np.zeros((0, 2)), [0.0, 0.0]) == 0.0
    # A box in 3-D.
    assert hypervolume(torch.tensor([[2.0, 3.0, 4.0]]), torch.zeros(3)) == pytest.approx(24.0)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 25), ties=st.booleans())
def test_hypervolume_2d_matches_grid(seed, m, ties):
    rng = np.random.default_rng(seed)
    pts = rng.integers(-2, 6, size=(m, 2)).astype(np.float64) if ties else rng.normal(size=(m, 2))
    ref = np.array([-1.0, -1.5])
    expected = grid_hypervolume(pts, ref)
    assert hypervolume(pts, ref) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # Minimisation of the negated problem is the same volume.
    assert hypervolume(-pts, -ref, maximize=False) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # Mixed: minimise the second objective of the mirrored-in-y data.
    mixed = pts * np.array([1.0, -1.0])
    got = hypervolume(mixed, ref * np.array([1.0, -1.0]), maximize=[True, False])
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # Dominated points never change the volume.
    assert hypervolume(pareto_front(pts), ref) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 8))
def test_hypervolume_3d_matches_grid(seed, m):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0.0, 1.0, size=(m, 3))
    ref = np.zeros(3)
    assert hypervolume(pts, ref) == pytest.approx(grid_hypervolume(pts, ref), rel=1e-12)


@pytest.mark.parametrize(
    "call",
    [
        lambda: non_dominated(np.zeros(3)),  # 1-D
        lambda: non_dominated(np.zeros((2, 2, 2))),
        lambda: non_dominated([[0.0, np.nan]]),
        lambda: non_dominated([[0.0, 1.0]], maximize=[True]),  # wrong number of flags
        lambda: hypervolume([[1.0, 1.0]], [0.0]),  # reference of the wrong length
        lambda: hypervolume([[1.0, 1.0]], [0.0, np.inf]),
        lambda: hypervolume([[1.0, np.inf]], [0.0, 0.0]),
    ],
)
def test_bad_input_raises(call):
    with pytest.raises(ValueError):
        call()
