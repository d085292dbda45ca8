"""The gradient bank's state machine (mogd.bank.GradientBank): rows that appear one by one before k
is known and are consolidated into one [k, n] block afterwards, .grad views that alias the rows (and
stay valid across cycles), foreign gradients adopted into the row, and the inputs it refuses.

Checked against facts computed here: storage addresses, values written through one alias and read
through the other, and byte counts from the parameters' sizes.
"""

import pytest
import torch

from mogd.bank import GradientBank


def params(*shapes, dtype=torch.float32):
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(*s, dtype=dtype)) for s in shapes]


def same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def test_rows_appear_one_by_one_until_k_is_known():
    ps = params((3, 2), (4,))
    bank = GradientBank(ps)
    assert bank.k is None and bank.rows_allocated == 0
    for i in (0, 2):  # an objective index may skip ahead; the gap row is allocated when needed
        bank.ensure_row(i)
        bank.point_grads(i)
        for p in ps:
            p.grad.add_(float(i + 1))  # autograd's in-place accumulation, by hand
    assert bank.live == {0, 2} and bank.rows_allocated == 3
    assert torch.equal(bank.row_tensors(2)[0], torch.full((10,), 3.0))
    with pytest.raises(RuntimeError, match="not fixed"):
        bank.matrices()
    bank.ensure_row(1)
    bank.fix_k(3)
    rows = bank.matrices()[0]  # before consolidation: k lists of one row each
    assert isinstance(rows, list) and [r[0].sum().item() for r in rows] == [10.0, 0.0, 30.0]


def test_consolidation_into_one_block_after_the_first_cycle():
    ps = params((3, 2), (4,))
    bank = GradientBank(ps)
    for i in range(2):
        bank.ensure_row(i)
    bank.fix_k(2)
    bank.reset()
    bank.ensure_row(0)  # no row in use: the separate rows are swapped for one block
    (block,) = bank.matrices()
    assert isinstance(block, torch.Tensor) and tuple(block.shape) == (2, 10)
    assert all(p.grad is None for p in ps)  # views of the dropped rows are not left behind
    assert bank.nbytes() == 2 * sum(p.numel() * p.element_size() for p in ps)
    bank.point_grads(0)
    assert all(same_storage(p.grad, block) for p in ps)


def test_views_alias_the_rows_and_survive_cycles():
    ps = params((2, 3), (5,))
    bank = GradientBank(ps, k=2)
    bank.ensure_row(1)
    views = bank.grads(1)
    assert views is not None and bank.grads(1)[0] is views[0]  # cached: the same view objects
    views[0].fill_(7.0)
    assert torch.equal(bank.row_tensors(1)[0][:6], torch.full((6,), 7.0))
    ptr = bank.matrices()[0].data_ptr()
    bank.reset()
    bank.ensure_row(1)  # a new cycle zeroes the row in place
    assert bank.matrices()[0].data_ptr() == ptr
    assert torch.equal(views[0], torch.zeros(2, 3))  # and the old views see it
    bank.point_grads(1, only=[True, False])
    assert ps[0].grad is views[0] and ps[1].grad is None


def test_adopting_a_foreign_gradient():
    """Autograd replaces .grad out of place under create_graph=True: the row must still get it."""
    ps = params((4,))
    bank = GradientBank(ps, k=1)
    bank.ensure_row(0)
    bank.point_grads(0)
    foreign = torch.arange(4.0)
    ps[0].grad = foreign
    bank.adopt_foreign_grads(0)
    assert torch.equal(bank.row_tensors(0)[0], foreign)
    assert ps[0].grad is bank.grads(0)[0]


def test_store_leaves_unreached_parameters_at_zero():
    ps = params((2,), (3,))
    bank = GradientBank(ps, k=2)
    for i in range(2):
        bank.ensure_row(i)
    bank.store(1, [None, torch.tensor([1.0, 2.0, 3.0])])
    assert bank.row_tensors(1)[0].tolist() == [0.0, 0.0, 1.0, 2.0, 3.0]


def test_one_buffer_per_dtype():
    ps = params((3,)) + params((2,), dtype=torch.float64)
    bank = GradientBank(ps, k=2)
    assert len(bank.groups) == 2 and bank.numel == 5
    assert {g.dtype for g in bank.groups} == {torch.float32, torch.float64}
    assert bank.nbytes() == 0  # nothing is allocated before a row is needed
    bank.ensure_row(0)
    assert bank.nbytes() == 2 * (3 * 4 + 2 * 8)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: torch.zeros(3, dtype=torch.int64), "floating point"),
        (lambda: torch.zeros(3, 3).to_sparse(), "sparse"),
    ],
)
def test_refuses_what_it_cannot_store(make, match):
    with pytest.raises(TypeError, match=match):
        GradientBank([make()])
