"""MOGD: the update against a naive float64 reference (k × autograd.grad, stack, Gram,
mogd.min_norm, assign), convex problems with known Pareto sets, the paper's Theorems 3.2–3.3 on a small
model, the gradient bank's memory and zero-gradient rules, probe mode and the failure policy.

References never call MOGD's own code paths: they build G from torch.autograd.grad in float64 and
apply the weighting formulas of DESIGN §1 directly (mogd.min_norm is the tested QP solver).
"""

import math
import warnings

import pytest
import torch

import mogd
from mogd.optimizer import MOGD, StepInfo

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def make_model(seed=0, dtype=torch.float32, din=6, hidden=12, dout=3):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(din, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, dout)
    ).to(dtype)


def make_losses(model, x, k=3):
    """k different scalar objectives from one forward (one shared graph)."""
    out = model(x)
    m = out.shape[0]
    targets = [
        torch.linspace(-1, 1, m, device=x.device),
        torch.ones(m, device=x.device),
        x[:, 0].cos(),
    ]
    return [((out[:, i % out.shape[1]] - targets[i % 3]) ** 2).mean() for i in range(k)]


def flat_grads(losses, params):
    """[k, n] float64 per-objective gradients, by torch.autograd.grad (zeros where unreached)."""
    rows = []
    for loss in losses:
        gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1).double().cpu()
                    for g, p in zip(gs, params, strict=True)
                ]
            )
        )
    return torch.stack(rows)


def reference_weights(G: torch.Tensor, method: str, p: float = 1.0, pref=None) -> torch.Tensor:
    """DESIGN §1 weights from a float64 Gram: MGDA, GAPO(p) rescaled, P-GAPO(λ)."""
    n = G.diagonal().clamp(min=0).sqrt()
    if method == "mgda":
        return mogd.min_norm(G).weights
    if method == "gapo":
        D = n**-p
        alpha = mogd.min_norm(G * torch.outer(D, D)).weights
        return alpha * D
    if method == "pgapo":
        lam = torch.tensor(pref, dtype=torch.float64)
        return lam / lam.sum() / n
    raise ValueError(method)


def sgd_reference(model, losses, lr, method, **kw):
    """Parameters after one naive SGD step along d = Σ w_i g_i, and the weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    J = flat_grads(losses, params)
    G = J @ J.T
    w = reference_weights(G, method, **kw)
    d = w @ J
    new, off = [], 0
    for p in params:
        new.append(p.detach().double().cpu() - lr * d[off : off + p.numel()].view_as(p))
        off += p.numel()
    return new, w, G


def flat(params):
    return torch.cat([p.detach().reshape(-1).double().cpu() for p in params])


# ---------------------------------------------------------------------------------------------
# full mode against the naive reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weighting", "method", "kw"),
    [
        (mogd.MGDA(), "mgda", {}),
        (mogd.GAPO(p=1), "gapo", {"p": 1.0}),
        (mogd.GAPO(p=2), "gapo", {"p": 2.0}),
        (mogd.PGAPO([0.2, 0.3, 0.5]), "pgapo", {"pref": [0.2, 0.3, 0.5]}),
    ],
)
def test_full_mode_equals_naive_reference(weighting, method, kw):
    model = make_model(dtype=torch.float64)
    x = torch.randn(32, 6, dtype=torch.float64)
    lr = 0.05
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=lr), weighting)
    for _ in range(3):
        expected, w, G = sgd_reference(model, make_losses(model, x), lr, method, **kw)
        opt.zero_grad()
        info = opt.step(make_losses(model, x))
        torch.testing.assert_close(info.gram, G, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(info.weights, w, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(flat(model.parameters()), flat(expected), rtol=0, atol=1e-12)


def test_float32_model_equals_reference_to_1e6():
    model = make_model(seed=3)
    x = torch.randn(64, 6)
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=0.1), mogd.GAPO(p=1))
    for _ in range(4):
        expected, w, _ = sgd_reference(model, make_losses(model, x), 0.1, "gapo", p=1.0)
        opt.zero_grad()
        info = opt.step(make_losses(model, x))
        torch.testing.assert_close(info.weights, w, rtol=1e-5, atol=1e-6)
        assert (flat(model.parameters()) - flat(expected)).abs().max() < 1e-6


def test_objective_contexts_equal_step_losses_and_accumulate():
    """Separate forward passes per objective, and micro-batch accumulation, give the same step as
    step(losses) on the full batch (sum of micro-batch losses)."""
    x = torch.randn(40, 6, dtype=torch.float64)
    a = make_model(seed=1, dtype=torch.float64)
    b = make_model(seed=1, dtype=torch.float64)
    opt_a = MOGD(torch.optim.SGD(a.parameters(), lr=0.1), mogd.MGDA())
    opt_b = MOGD(torch.optim.SGD(b.parameters(), lr=0.1), mogd.MGDA())
    for _ in range(3):
        opt_a.zero_grad()
        full = [
            sum(pair) for pair in zip(make_losses(a, x[:20]), make_losses(a, x[20:]), strict=True)
        ]
        info_a = opt_a.step(full)
        opt_b.zero_grad()
        for half in (x[:20], x[20:]):  # micro-batches: each objective accumulates twice
            for i in range(3):
                with opt_b.objective(i):
                    make_losses(b, half)[i].backward()
        info_b = opt_b.step()
        torch.testing.assert_close(info_a.weights, info_b.weights, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(flat(a.parameters()), flat(b.parameters()), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# convex problems with known Pareto sets
# ---------------------------------------------------------------------------------------------

A = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
B = torch.tensor([-1.0, 1.0, 2.0, 0.0], dtype=torch.float64)


def segment_distance(x):
    """Distance of x to the segment [A, B] and the position t ∈ [0, 1] of its projection."""
    ab = B - A
    t = float(((x - A) @ ab) / (ab @ ab))
    t = min(1.0, max(0.0, t))
    return float((x - (A + t * ab)).norm()), t


def run_quadratics(weighting, steps, lr, start=(4.0, 4.0, -4.0, 2.0)):
    x = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    opt = MOGD(torch.optim.SGD([x], lr=lr), weighting)
    for _ in range(steps):
        opt.zero_grad()
        opt.step([((x - A) ** 2).sum(), ((x - B) ** 2).sum()])
    return x.detach()


@pytest.mark.parametrize(
    ("weighting", "lr"), [(mogd.MGDA(), 0.2), (mogd.GAPO(p=1), 0.3), (mogd.GAPO(p=2), 1.0)]
)
def test_converges_onto_pareto_segment(weighting, lr):
    # ‖x − a‖² and ‖x − b‖²: the Pareto set is the segment [a, b]
    x = run_quadratics(weighting, steps=300, lr=lr)
    dist, _ = segment_distance(x)
    assert dist < 1e-6


def test_pgapo_end_point_moves_monotonically_with_preference():
    positions = []
    for lam in (0.3, 0.4, 0.5, 0.6, 0.7):
        x = run_quadratics(mogd.PGAPO([lam, 1 - lam]), steps=120, lr=0.1)
        dist, t = segment_distance(x)
        assert dist < 0.5  # unit-norm steps of length ≤ lr reached the segment's neighbourhood
        positions.append(t)
    # more weight on objective 0 (‖x − a‖²) ends closer to a (t = 0)
    assert all(p0 > p1 for p0, p1 in zip(positions, positions[1:], strict=False)), positions


# ---------------------------------------------------------------------------------------------
# the paper's theorems on a small model, tiny step
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 1.0, 2.0])
def test_common_descent_and_progress_ratio(p):
    """Thm 3.2: every objective decreases to first order. Thm 3.3: with interior α the decreases
    are in the ratio n_i^p / n_j^p."""
    model = make_model(seed=5, dtype=torch.float64)
    x = torch.randn(48, 6, dtype=torch.float64)
    lr = 1e-6
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=lr), mogd.GAPO(p=p))
    before = torch.stack([loss.detach() for loss in make_losses(model, x, k=2)])
    info = opt.step(make_losses(model, x, k=2))
    after = torch.stack([loss.detach() for loss in make_losses(model, x, k=2)])
    drop = before - after
    assert (drop > 0).all(), drop
    assert info.alpha is not None and (info.alpha > 0).all(), "test needs an interior α"
    ratio = float(drop[0] / drop[1])
    expected = float((info.norms[0] / info.norms[1]) ** p)
    assert ratio == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------------------------------------
# probe mode
# ---------------------------------------------------------------------------------------------


def test_probe_all_parameters_equals_full_mode():
    x = torch.randn(32, 6)
    a, b = make_model(seed=7), make_model(seed=7)
    opt_a = MOGD(torch.optim.AdamW(a.parameters(), lr=1e-2), mogd.GAPO(p=1))
    opt_b = MOGD(torch.optim.AdamW(b.parameters(), lr=1e-2), mogd.GAPO(p=1), probe=b)
    for _ in range(4):
        opt_a.zero_grad()
        opt_b.zero_grad()
        ia = opt_a.step(make_losses(a, x))
        ib = opt_b.step(make_losses(b, x))
        torch.testing.assert_close(ia.weights, ib.weights, rtol=1e-6, atol=1e-9)
        assert (flat(a.parameters()) - flat(b.parameters())).abs().max() < 1e-6


def test_probe_head_weights_and_single_weighted_backward():
    model = make_model(seed=2, dtype=torch.float64)
    head = model[2]
    x = torch.randn(32, 6, dtype=torch.float64)
    lr = 0.1
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=lr), mogd.MGDA(), probe=head)
    losses = make_losses(model, x)
    J = flat_grads(losses, list(head.parameters()))
    w = mogd.min_norm(J @ J.T).weights
    total = sum(float(wi) * loss for wi, loss in zip(w, losses, strict=True))
    g = torch.autograd.grad(total, list(model.parameters()), retain_graph=True)
    expected = [p.detach() - lr * gi for p, gi in zip(model.parameters(), g, strict=True)]
    info = opt.step(losses)
    torch.testing.assert_close(info.weights, w, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(flat(model.parameters()), flat(expected), rtol=0, atol=1e-12)
    head_bytes = sum(p.numel() * p.element_size() for p in head.parameters())
    assert opt._bank.nbytes() == 3 * head_bytes  # k × probe bytes


# ---------------------------------------------------------------------------------------------
# the gradient bank
# ---------------------------------------------------------------------------------------------


def test_bank_memory_views_and_frozen_parameters():
    model = make_model(seed=4)
    model[0].bias.requires_grad_(False)
    opt = MOGD(torch.optim.AdamW(model.parameters(), lr=1e-3))
    x = torch.randn(8, 6)
    opt.step(make_losses(model, x))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert opt._bank.nbytes() == 3 * sum(p.numel() * p.element_size() for p in trainable)
    assert model[0].bias.grad is None
    storage = opt._bank.groups[0].block
    for p in trainable:  # the inner optimizer read views of the bank, no extra .grad storage
        assert p.grad.untyped_storage().data_ptr() == storage.untyped_storage().data_ptr()


def test_unreached_parameters_count_as_zero_and_are_left_alone():
    """Objective 1 never reaches the extra head; a parameter no objective reaches gets .grad None,
    so AdamW's weight decay leaves it alone exactly as in plain training."""
    torch.manual_seed(0)
    body = torch.nn.Linear(4, 4).double()
    head1 = torch.nn.Linear(4, 1).double()
    head2 = torch.nn.Linear(4, 1).double()
    unused = torch.nn.Linear(4, 1).double()
    params = [*body.parameters(), *head1.parameters(), *head2.parameters(), *unused.parameters()]
    frozen_unused = [p.detach().clone() for p in unused.parameters()]
    opt = MOGD(torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1), mogd.MGDA())
    x = torch.randn(16, 4, dtype=torch.float64)

    def losses():
        h = torch.tanh(body(x))
        return [head1(h).pow(2).mean(), (head2(h) - 1).pow(2).mean()]

    J = flat_grads(losses(), params)
    info = opt.step(losses())
    torch.testing.assert_close(info.gram, J @ J.T, rtol=1e-10, atol=1e-12)
    for p, q in zip(unused.parameters(), frozen_unused, strict=True):
        assert p.grad is None and torch.equal(p, q)


def test_zero_gradient_objective_gets_weight_zero():
    model = make_model(seed=8, dtype=torch.float64)
    x = torch.randn(16, 6, dtype=torch.float64)
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=0.1), mogd.GAPO(p=1))
    for _ in range(2):
        before = flat(model.parameters())
        out = model(x)
        info = opt.step([(out[:, 0] ** 2).mean(), (0.0 * out).sum(), (out[:, 1] - 1).pow(2).mean()])
        assert info.weights[1] == 0.0 and info.norms[1] == 0.0
        assert (info.weights[[0, 2]] > 0).all()
        assert not torch.equal(before, flat(model.parameters()))


@pytest.mark.parametrize("form", ["losses", "objective"])
@pytest.mark.parametrize("inner_cls", [torch.optim.AdamW, torch.optim.SGD])
def test_single_objective_is_bitwise_the_inner_optimizer(form, inner_cls):
    x = torch.randn(24, 6)
    a, b = make_model(seed=9), make_model(seed=9)
    kw = {"lr": 1e-2, "weight_decay": 0.01} | (
        {"momentum": 0.9} if inner_cls is torch.optim.SGD else {}
    )
    plain = inner_cls(a.parameters(), **kw)
    opt = MOGD(inner_cls(b.parameters(), **kw), mogd.GAPO(p=1))
    for _ in range(5):
        plain.zero_grad()
        make_losses(a, x, k=1)[0].backward()
        plain.step()
        opt.zero_grad()
        if form == "losses":
            opt.step(make_losses(b, x, k=1))
        else:
            with opt.objective(0):
                make_losses(b, x, k=1)[0].backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


# ---------------------------------------------------------------------------------------------
# failure policy
# ---------------------------------------------------------------------------------------------


def nan_losses(model, x, bad=1, value=math.nan):
    losses = make_losses(model, x)
    out = model(x)
    losses[bad] = losses[bad] + value * out[:, 0].sum()
    return losses


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nonfinite_skip_leaves_everything_untouched(value):
    model = make_model(seed=10)
    x = torch.randn(8, 6)
    opt = MOGD(torch.optim.AdamW(model.parameters(), lr=1e-2))
    opt.step(make_losses(model, x))
    params = [p.detach().clone() for p in model.parameters()]
    state = {k: {n: t.clone() for n, t in v.items()} for k, v in opt.state.items()}
    opt.zero_grad()
    with pytest.warns(RuntimeWarning, match=r"objective\(s\) 1"):
        info = opt.step(nan_losses(model, x, bad=1, value=value))
    assert info.skipped and torch.isnan(info.weights).all()
    for p, q in zip(model.parameters(), params, strict=True):
        assert torch.equal(p, q)
    for k, v in opt.state.items():
        for n, t in v.items():
            assert torch.equal(t, state[k][n])
    opt.zero_grad()
    info = opt.step(make_losses(model, x))  # training goes on
    assert not info.skipped and opt.state_dict()["mogd"]["step"] == 2


def test_nonfinite_raise_names_the_objective():
    model = make_model(seed=11)
    x = torch.randn(8, 6)
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=0.1), nonfinite="raise")
    params = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match=r"objective\(s\) 2"):
        opt.step(nan_losses(model, x, bad=2))
    for p, q in zip(model.parameters(), params, strict=True):
        assert torch.equal(p, q)


def test_probe_mode_skips_nonfinite_outside_the_probe():
    model = make_model(seed=12)
    x = torch.randn(8, 6)
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=0.1), probe=model[2])
    params = [p.detach().clone() for p in model.parameters()]
    losses = make_losses(model, x)
    losses[0] = losses[0] + math.inf * model[0].weight.sum()  # invisible to the probe's Gram
    with pytest.warns(RuntimeWarning, match="combined gradient"):
        info = opt.step(losses)
    assert info.skipped
    for p, q in zip(model.parameters(), params, strict=True):
        assert torch.equal(p, q)


def test_bad_arguments_raise_with_the_fix():
    model = make_model(seed=13)
    x = torch.randn(8, 6)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        MOGD(model)
    with pytest.raises(TypeError, match="weighting"):
        MOGD(torch.optim.SGD(model.parameters(), lr=0.1), weighting=lambda G: G)
    with pytest.raises(ValueError, match="nonfinite"):
        MOGD(torch.optim.SGD(model.parameters(), lr=0.1), nonfinite="ignore")
    with pytest.raises(ValueError, match="probe parameters"):
        MOGD(torch.optim.SGD(model[0].parameters(), lr=0.1), probe=model[2])
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="list or tuple"):
        opt.step(make_losses(model, x)[0])
    with pytest.raises(TypeError, match="closure"):
        opt.step(lambda: 0.0)
    with pytest.raises(ValueError, match=r"losses\[0\] has shape"):
        opt.step([model(x).sum(1), make_losses(model, x)[0]])
    with pytest.raises(ValueError, match=r"losses\[1\] does not require grad"):
        opt.step([make_losses(model, x)[0], torch.tensor(1.0)])
    with pytest.raises(ValueError, match="empty"):
        opt.step([])
    with pytest.raises(ValueError, match="no per-objective gradients"):
        opt.step()
    opt.step(make_losses(model, x, k=2))
    with pytest.raises(ValueError, match="got 3 losses but earlier steps had k = 2"):
        opt.step(make_losses(model, x, k=3))
    with pytest.raises(ValueError, match="objective index 2 is out of range"):
        with opt.objective(2):
            pass
    with pytest.raises(ValueError, match="objective index -1"):
        with opt.objective(-1):
            pass
    with pytest.raises(TypeError, match="objective index must be an int"):
        with opt.objective(1.0):
            pass
    opt.zero_grad()
    with opt.objective(0):
        make_losses(model, x)[0].backward()
    with pytest.raises(ValueError, match="objective 1 was never backpropagated"):
        opt.step()
    opt.zero_grad()
    with opt.objective(0):
        make_losses(model, x)[0].backward()
    with pytest.raises(RuntimeError, match=r"outside opt.objective\(i\) while"):
        make_losses(model, x)[1].backward()


def test_objective_index_gap_names_the_missing_objective_on_first_step():
    model = make_model(seed=14)
    x = torch.randn(8, 6)
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=0.1))
    for i in (0, 2):
        with opt.objective(i):
            make_losses(model, x)[i].backward()
    with pytest.raises(ValueError, match="objective 1 was never backpropagated"):
        opt.step()


def test_sparse_gradients_raise_type_error():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = MOGD(torch.optim.SGD(emb.parameters(), lr=0.1))
    idx = torch.tensor([1, 2, 2])
    with pytest.raises(TypeError, match="sparse"):
        opt.step([emb(idx).sum(), emb(idx).pow(2).sum()])


def test_probe_mode_usage_errors():
    model = make_model(seed=15)
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=0.1), probe=model[2])
    with pytest.raises(ValueError, match="probe mode needs the losses"):
        opt.step()
    with pytest.raises(ValueError, match=r"instead of opt.objective\(i\)"):
        with opt.objective(0):
            pass
    with pytest.raises(ValueError, match="no trainable parameters"):
        MOGD(torch.optim.SGD(model.parameters(), lr=0.1), probe=torch.nn.ReLU())


# ---------------------------------------------------------------------------------------------
# StepInfo
# ---------------------------------------------------------------------------------------------


def test_step_info_fields_and_as_dict():
    model = make_model(seed=16, dtype=torch.float64)
    x = torch.randn(16, 6, dtype=torch.float64)
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=0.1), mogd.GAPO(p=2))
    J = flat_grads(make_losses(model, x, k=2), list(model.parameters()))
    info = opt.step(make_losses(model, x, k=2))
    assert isinstance(info, StepInfo) and opt.last_info is info
    n = J.norm(dim=1)
    torch.testing.assert_close(info.norms, n, rtol=1e-10, atol=0)
    torch.testing.assert_close(info.cosine, (J @ J.T) / torch.outer(n, n), rtol=1e-10, atol=1e-12)
    assert info.kkt_residual is not None and info.kkt_residual < 1e-9
    d = info.as_dict(names=("helpful", "harmless"))
    assert set(d) == {
        "weight/helpful",
        "weight/harmless",
        "norm/helpful",
        "norm/harmless",
        "alpha/helpful",
        "alpha/harmless",
        "cosine/helpful/harmless",
        "kkt_residual",
        "direction_norm",
        "skipped",
    }
    assert all(isinstance(v, float) for v in d.values()) and d["skipped"] == 0.0
    d_ref = info.weights @ J  # float64 reference direction from the independent Jacobian
    assert d["direction_norm"] == pytest.approx(float(d_ref.norm()), rel=1e-9)
    assert d["cosine/helpful/harmless"] == pytest.approx(float(info.cosine[0, 1]))
    with pytest.raises(ValueError, match="names has 1 entries"):
        info.as_dict(names=("only",))
    pinfo = MOGD(torch.optim.SGD(model.parameters(), lr=0.1), mogd.PGAPO([1, 1])).step(
        make_losses(model, x, k=2)
    )
    assert pinfo.alpha is None and "alpha/0" not in pinfo.as_dict()
    text = repr(opt)
    assert "GAPO(p=2" in text and "objectives: 2" in text and "SGD" in text


def test_no_warning_on_clean_steps():
    model = make_model(seed=17)
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            opt.zero_grad()
            opt.step(make_losses(model, torch.randn(8, 6)))


# ---------------------------------------------------------------------------------------------
# CUDA: the fused Triton passes behind the same optimizer (skipped without a GPU)
# ---------------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("k", [2, 5])
def test_cuda_full_mode_equals_float64_reference(k):
    model = make_model(seed=20).cuda()
    x = torch.randn(256, 6, device="cuda")
    lr = 0.05
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=lr), mogd.GAPO(p=1))
    for _ in range(3):
        expected, w, G = sgd_reference(model, make_losses(model, x, k=k), lr, "gapo", p=1.0)
        opt.zero_grad()
        info = opt.step(make_losses(model, x, k=k))
        torch.testing.assert_close(info.gram, G, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(info.weights, w, rtol=1e-5, atol=1e-7)
        assert (flat(model.parameters()) - flat(expected)).abs().max() < 1e-6


@cuda
def test_cuda_single_objective_is_bitwise_adamw():
    x = torch.randn(64, 6, device="cuda")
    a, b = make_model(seed=21).cuda(), make_model(seed=21).cuda()
    plain = torch.optim.AdamW(a.parameters(), lr=1e-2)
    opt = MOGD(torch.optim.AdamW(b.parameters(), lr=1e-2))
    for _ in range(5):
        plain.zero_grad()
        make_losses(a, x, k=1)[0].backward()
        plain.step()
        opt.zero_grad()
        opt.step(make_losses(b, x, k=1))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


@cuda
def test_cuda_bf16_probe_equals_full_mode():
    x = torch.randn(64, 6, device="cuda", dtype=torch.bfloat16)
    a = make_model(seed=22).cuda().to(torch.bfloat16)
    b = make_model(seed=22).cuda().to(torch.bfloat16)
    opt_a = MOGD(torch.optim.SGD(a.parameters(), lr=1e-2))
    opt_b = MOGD(torch.optim.SGD(b.parameters(), lr=1e-2), probe=b)
    ia = opt_a.step(make_losses(a, x))
    ib = opt_b.step(make_losses(b, x))
    torch.testing.assert_close(ia.weights, ib.weights, rtol=1e-2, atol=1e-4)
