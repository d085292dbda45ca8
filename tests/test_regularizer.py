"""A regularizer outside the trade-off: ``opt.step(losses, regularizer=R)``, ``opt.backward(losses,
regularizer=R, scaler=...)`` and ``with opt.regularizer(): R.backward()``.

The update is d = Σ_i w_i g_i + ∇R with w solved on the k objectives' Gram alone, and ``max_norm``
clips the whole of d as torch.nn.utils.clip_grad_norm_ would. References are float64 and independent
of the implementation: gradients from torch.autograd.grad, weights from the brute-force QP of
tests/reference.py, clipping by clip_grad_norm_ itself, and for k = 1 the inner optimizer on L + R.
The multi-process case (gloo DDP and FSDP2 against one process) is in test_distributed.py.
"""

import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import gapo_weights
from test_optimizer import flat, flat_grads, make_model
from test_optimizer_step import assert_same, host_reads, snapshot

import mogd
import mogd.optimizer
from mogd.bank import REGULARIZER, GradientBank
from mogd.optimizer import MOGD, StepInfo

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
P_VALUES = (0.0, 1.0, 2.0)


def weighting(p: float) -> mogd.Weighting:
    return mogd.MGDA() if p == 0 else mogd.GAPO(p=p)


def objectives(model, x, k, beta=0.5, zero=None):
    """k losses and a regularizer R = β (E‖f(x)‖² + 0.1 ‖W_0‖²) from one forward (a shared graph);
    objective ``zero`` gets an exactly zero gradient."""
    out = model(x)
    m = out.shape[0]
    like = {"dtype": x.dtype, "device": x.device}
    targets = [torch.linspace(-1, 1, m, **like), torch.ones(m, **like), x[:, 0].cos()]
    losses = [((out[:, i] - targets[i]) ** 2).mean() for i in range(k)]
    if zero is not None:
        losses[zero] = 0.0 * out.sum()
    regularizer = beta * (out.pow(2).sum(1).mean() + 0.1 * model[0].weight.pow(2).sum())
    return losses, regularizer


def clipped(d, max_norm):
    """d as torch.nn.utils.clip_grad_norm_ leaves it (unchanged without max_norm)."""
    ref = torch.nn.Parameter(torch.zeros_like(d))
    ref.grad = d.clone()
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_([ref], max_norm)
    return ref.grad


def reference(model, losses, regularizer, p, probe=None):
    """float64 (w, d = Σ w_i g_i + r, r, J, the rows the weights and the regularizer's statistics
    come from): the probe's gradients in probe mode, the whole model's otherwise."""
    params = list(model.parameters())
    J = flat_grads(losses, params)
    r = flat_grads([regularizer], params)[0]
    seen = params if probe is None else list(probe.parameters())
    Js, rs = flat_grads(losses, seen), flat_grads([regularizer], seen)[0]
    w = torch.from_numpy(gapo_weights((Js @ Js.T).numpy(), p))
    return w, w @ J + r, Js, rs


def cosines(J, r):
    n = J.norm(dim=1) * r.norm()
    return torch.where(n > 0, (J @ r) / torch.where(n > 0, n, 1.0), 0.0)


def data(seed, rows=16):
    return torch.randn(rows, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# the update against the float64 reference
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    k=st.integers(1, 3),
    p=st.sampled_from(P_VALUES),
    beta=st.floats(0.0, 3.0),
    max_norm=st.sampled_from([None, 1e-3, 0.05, 1e3]),
    probe=st.booleans(),
    weights_on=st.sampled_from(["host", "device"]),
)
def test_update_is_weighted_gradients_plus_regularizer_gradient_clipped_as_a_whole(
    seed, k, p, beta, max_norm, probe, weights_on
):
    """d = Σ w_i g_i + ∇R (probe mode: the ONE backward of Σ w_i L_i + R, w from the probe), and
    the parameters move by -lr · clip_grad_norm_(d)."""
    model = make_model(seed=seed, dtype=torch.float64)
    x = data(seed)
    lr = 0.1
    head = model[2] if probe else None
    opt = MOGD(
        torch.optim.SGD(model.parameters(), lr=lr),
        weighting(p),
        max_norm=max_norm,
        probe=head,
        weights_on=weights_on,
    )
    for _ in range(2):
        losses, R = objectives(model, x, k, beta)
        w, d, Js, rs = reference(model, losses, R, p, probe=head)
        expected = flat(model.parameters()) - lr * clipped(d, max_norm)
        opt.zero_grad()
        info = opt.step(losses, regularizer=R)
        torch.testing.assert_close(info.weights, w, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(info.gram, Js @ Js.T, rtol=1e-10, atol=1e-12)
        assert info.direction_norm == pytest.approx(float(d.norm()), rel=1e-9)
        assert info.regularizer_norm == pytest.approx(float(rs.norm()), rel=1e-9, abs=1e-15)
        torch.testing.assert_close(info.regularizer_cosine, cosines(Js, rs), rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(flat(model.parameters()), expected, rtol=0, atol=1e-12)


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    k=st.integers(1, 3),
    p=st.sampled_from(P_VALUES),
    beta=st.floats(0.0, 10.0),
    zero=st.integers(0, 2),
    probe=st.booleans(),
)
def test_weights_with_the_regularizer_equal_the_weights_without(seed, k, p, beta, zero, probe):
    """R never enters the Gram and never gets a weight; an objective with a zero gradient still
    gets weight 0 (k > 1)."""
    zero = zero if zero < k and k > 1 else None
    x = data(seed)
    infos = []
    for with_r in (True, False):
        model = make_model(seed=seed, dtype=torch.float64)
        opt = MOGD(
            torch.optim.SGD(model.parameters(), lr=0.1),
            weighting(p),
            probe=model[2] if probe else None,
        )
        losses, R = objectives(model, x, k, beta, zero=zero)
        w, *_ = reference(model, losses, R, p, probe=model[2] if probe else None)
        infos.append(opt.step(losses, regularizer=R if with_r else None))
    with_r, without = infos
    torch.testing.assert_close(with_r.weights, without.weights, rtol=1e-12, atol=0)
    torch.testing.assert_close(with_r.gram, without.gram, rtol=1e-12, atol=0)
    torch.testing.assert_close(with_r.weights, w, rtol=1e-8, atol=1e-10)
    if zero is not None:
        assert with_r.weights[zero] == 0.0 and with_r.norms[zero] == 0.0
        assert (with_r.weights[[i for i in range(k) if i != zero]] > 0).all()
    assert without.regularizer_norm is None and without.regularizer_cosine is None


@pytest.mark.parametrize("form", ["losses", "contexts"])
@pytest.mark.parametrize("max_norm", [None, 0.05])
@pytest.mark.parametrize("inner_cls", [torch.optim.AdamW, torch.optim.SGD])
def test_single_objective_is_the_inner_optimizer_on_loss_plus_regularizer(
    form, max_norm, inner_cls
):
    x = data(1)
    a, b = make_model(seed=9, dtype=torch.float64), make_model(seed=9, dtype=torch.float64)
    kw = {"lr": 1e-2, "weight_decay": 0.01} | (
        {"momentum": 0.9} if inner_cls is torch.optim.SGD else {}
    )
    plain = inner_cls(a.parameters(), **kw)
    opt = MOGD(inner_cls(b.parameters(), **kw), mogd.GAPO(p=1), max_norm=max_norm)
    for _ in range(4):
        plain.zero_grad()
        (loss,), R = objectives(a, x, k=1)
        (loss + R).backward()
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(a.parameters(), max_norm)
        plain.step()
        opt.zero_grad()
        losses, R = objectives(b, x, k=1)
        if form == "losses":
            opt.step(losses, regularizer=R)
        else:
            with opt.objective(0):
                losses[0].backward(retain_graph=True)
            with opt.regularizer():
                R.backward()
            opt.step()
    torch.testing.assert_close(flat(b.parameters()), flat(a.parameters()), rtol=0, atol=1e-12)


@SETTINGS
@given(
    seed=st.integers(0, 2**16),
    schedule=st.lists(st.booleans(), min_size=1, max_size=4),
    regularizer_first=st.booleans(),
    micro_batches=st.integers(1, 2),
)
def test_accumulation_with_opt_regularizer_equals_the_reference(
    seed, schedule, regularizer_first, micro_batches
):
    """Objectives and the regularizer backpropagated in contexts, over micro-batches, with the
    regularizer on some steps only (the bank grows its row, and a step without R reads k rows),
    equal the float64 reference on the summed micro-batch losses."""
    k, lr = 2, 0.1
    model = make_model(seed=seed, dtype=torch.float64)
    xs = [data(seed + j, rows=8) for j in range(micro_batches)]
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=lr), mogd.GAPO(p=1), max_norm=0.05)
    params = list(model.parameters())
    for with_r in schedule:
        J = torch.zeros(k, sum(q.numel() for q in params), dtype=torch.float64)
        r = torch.zeros(J.shape[1], dtype=torch.float64)
        for x in xs:
            losses, R = objectives(model, x, k)
            J += flat_grads(losses, params)
            r += flat_grads([R], params)[0] if with_r else 0.0
        w = torch.from_numpy(gapo_weights((J @ J.T).numpy(), 1.0))
        expected = flat(params) - lr * clipped(w @ J + r, 0.05)
        opt.zero_grad()
        for x in xs:
            losses, R = objectives(model, x, k)
            passes = [*((opt.objective(i), loss) for i, loss in enumerate(losses))]
            if with_r:
                passes.insert(0 if regularizer_first else k, (opt.regularizer(), R))
            for context, loss in passes:
                with context:
                    loss.backward(retain_graph=True)
        info = opt.step()
        torch.testing.assert_close(info.weights, w, rtol=1e-8, atol=1e-10)
        assert (info.regularizer_norm is None) == (not with_r)
        torch.testing.assert_close(flat(params), expected, rtol=0, atol=1e-12)
    # one more row of gradient memory once a regularizer was seen, none before
    nbytes = sum(q.numel() * q.element_size() for q in params)
    assert opt._bank.nbytes() == (k + any(schedule)) * nbytes


def test_probe_backward_accumulates_micro_batches_with_their_regularizers():
    """opt.backward(losses, regularizer=R) per micro-batch in probe mode: each micro-batch is
    weighted by its own probe Gram, and its R joins its one weighted backward."""
    model = make_model(seed=39, dtype=torch.float64)
    head = model[2]
    xs = [data(j, rows=8) for j in range(2)]
    lr = 0.1
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=lr), mogd.MGDA(), probe=head)
    total = 0.0
    for x in xs:
        losses, R = objectives(model, x, k=3)
        total = total + reference(model, losses, R, 0.0, probe=head)[1]
    expected = flat(model.parameters()) - lr * total
    for x in xs:
        losses, R = objectives(model, x, k=3)
        opt.backward(losses, regularizer=R)
    assert not opt.step().skipped
    torch.testing.assert_close(flat(model.parameters()), expected, rtol=0, atol=1e-12)


def test_a_parameter_only_the_regularizer_reaches_is_trained_by_it_alone():
    """The regularizer's gradient is part of the update wherever it lands, also on a parameter no
    objective reaches; zero_grad() discards a regularizer backpropagated before it."""
    model = make_model(seed=5, dtype=torch.float64)
    extra = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    lr = 0.1
    opt = MOGD(torch.optim.SGD([*model.parameters(), extra], lr=lr), mogd.GAPO(p=1))
    x = data(5)
    with opt.regularizer():
        (100.0 * extra.sum() + objectives(model, x, k=2)[1]).backward()
    opt.zero_grad()  # discards it
    losses, R = objectives(model, x, k=2)
    R = R + extra.pow(2).sum()
    w, d, *_ = reference(model, losses, R, 1.0)
    expected = flat(model.parameters()) - lr * d
    opt.step(losses, regularizer=R)
    torch.testing.assert_close(flat(model.parameters()), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(extra.detach(), torch.tensor([0.8, -1.6], dtype=torch.float64))


def test_one_gram_pass_over_k_plus_one_rows(monkeypatch):
    """The regularizer's gradient is one more row of the bank's block: the Gram pass reads the
    [k + 1, n] block once, and the combine writes d over row 0."""
    model = make_model(seed=6, dtype=torch.float64)
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=0.1))
    shapes = []
    real_gram = mogd.optimizer.gram
    monkeypatch.setattr(
        mogd.optimizer, "gram", lambda m: shapes.append(tuple(m.shape)) or real_gram(m)
    )
    n = sum(p.numel() for p in model.parameters())
    for _ in range(2):  # the first step builds the bank, the second reuses it
        opt.zero_grad()
        losses, R = objectives(model, data(6), k=3)
        opt.step(losses, regularizer=R)
    assert shapes == [(4, n), (4, n)]
    assert model[0].weight.grad.untyped_storage().data_ptr() == opt._bank.groups[0].block.data_ptr()


def test_bank_grows_a_row_for_the_regularizer_between_cycles():
    ps = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    bank = GradientBank(ps, k=2)
    for i in (0, 1, REGULARIZER):  # a k-row block exists: the regularizer's row comes apart
        bank.ensure_row(i)
        bank.point_grads(i)
        for p in ps:
            p.grad.add_(float(i + 2))
    rows = bank.matrices()[0]
    assert isinstance(rows, list) and [r[0][0].item() for r in rows] == [2.0, 3.0, 1.0]
    assert bank.nbytes() == 3 * 10 * 4
    bank.reset()
    bank.ensure_row(0)  # no row in use: one [k + 1, n] block from now on
    (block,) = bank.matrices()
    assert tuple(block.shape) == (2, 10)  # this step has no regularizer (yet)
    bank.ensure_row(REGULARIZER)
    (block,) = bank.matrices()
    assert tuple(block.shape) == (3, 10) and bank.nbytes() == 3 * 10 * 4
    bank.point_grads(REGULARIZER)
    ps[1].grad.fill_(7.0)
    assert torch.equal(block[2, 6:], torch.full((4,), 7.0))


# ---------------------------------------------------------------------------------------------
# mixed precision, non-finite regularizers, the device path
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["backward", "contexts", "probe"])
def test_grad_scaler_unscales_the_regularizer_and_backs_off_on_it(form):
    model = make_model(seed=35, dtype=torch.float64)
    x = data(35)
    lr, max_norm = 0.1, 0.05
    head = model[2] if form == "probe" else None
    opt = MOGD(
        torch.optim.SGD(model.parameters(), lr=lr), mogd.GAPO(p=2), max_norm=max_norm, probe=head
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)

    def one(losses, R):
        opt.zero_grad()
        if form == "contexts":
            for i, loss in enumerate(losses):
                with opt.objective(i):
                    scaler.scale(loss).backward(retain_graph=True)
            with opt.regularizer():
                scaler.scale(R).backward()
        else:
            opt.backward(losses, regularizer=R, scaler=scaler)
        info = scaler.step(opt)
        scaler.update()
        return info

    for _ in range(2):
        losses, R = objectives(model, x, k=3)
        w, d, _, rs = reference(model, losses, R, 2.0, probe=head)
        expected = flat(model.parameters()) - lr * clipped(d, max_norm)
        info = one(losses, R)
        torch.testing.assert_close(info.weights, w, rtol=1e-8, atol=1e-10)
        assert info.direction_norm == pytest.approx(float(d.norm()), rel=1e-9)
        assert info.regularizer_norm == pytest.approx(float(rs.norm()), rel=1e-9)
        torch.testing.assert_close(flat(model.parameters()), expected, rtol=0, atol=1e-12)
    scale, snap = scaler.get_scale(), snapshot(model, opt)
    losses, R = objectives(model, x, k=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the scaler's skips are routine: no MOGD warning
        info = one(losses, R + math.inf * model[0].weight.sum())
    assert info.skipped and scaler.get_scale() == scale * 0.5
    assert_same(model, opt, snap)


@pytest.mark.parametrize(
    ("probe", "where", "match"),
    [
        (False, "everywhere", "the regularizer"),
        (True, "probe", "the regularizer"),
        (True, "outside the probe", "the combined gradient"),
    ],
)
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nonfinite_regularizer_skips_the_step(probe, where, match, value):
    model = make_model(seed=10)
    x = torch.randn(8, 6)
    opt = MOGD(torch.optim.AdamW(model.parameters(), lr=1e-2), probe=model[2] if probe else None)
    losses, R = objectives(model, x, k=2)
    opt.step(losses, regularizer=R)
    snap = snapshot(model, opt)
    losses, R = objectives(model, x, k=2)
    reaches = model[0].weight.sum() if where == "outside the probe" else model(x).sum()
    opt.zero_grad()
    with pytest.warns(RuntimeWarning, match=match):
        info = opt.step(losses, regularizer=R + value * reaches)
    assert info.skipped and torch.isnan(info.weights).all()
    assert all(p.grad is None for p in model.parameters())
    assert_same(model, opt, snap)
    losses, R = objectives(model, x, k=2)
    assert not opt.step(losses, regularizer=R).skipped  # training goes on
    raising = MOGD(torch.optim.SGD(model.parameters(), lr=0.1), nonfinite="raise")
    losses, R = objectives(model, x, k=2)
    with pytest.raises(FloatingPointError, match="the regularizer"):
        raising.step(losses, regularizer=R * value)


@pytest.mark.parametrize("probe", [False, True])
def test_device_step_with_a_regularizer_never_reads_the_host(monkeypatch, probe):
    """The fused-AdamW device path with a regularizer and clipping: no host read, a non-finite R
    skips on the device, and the run equals the host path's."""
    x = torch.randn(16, 6)
    runs = {}
    for where in ("device", "host"):
        model = make_model(seed=30)
        inner = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
        opt = MOGD(inner, max_norm=0.3, weights_on=where, probe=model[2] if probe else None)
        infos = []
        for step in range(3):
            losses, R = objectives(model, x, k=2)
            if step == 1:
                R = R + math.nan * model(x).sum()
            opt.zero_grad()
            if where == "device":
                with host_reads(monkeypatch) as hits:
                    infos.append(opt.step(losses, regularizer=R))
                assert hits == [], hits
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    infos.append(opt.step(losses, regularizer=R))
        assert [i.skipped for i in infos] == [False, True, False]
        runs[where] = (flat(model.parameters()), infos)
    (p_dev, i_dev), (p_host, i_host) = runs["device"], runs["host"]
    torch.testing.assert_close(p_dev, p_host, rtol=0, atol=1e-6)
    for a, b in zip(i_dev, i_host, strict=True):
        if not a.skipped:
            assert a.regularizer_norm == pytest.approx(b.regularizer_norm, rel=1e-6)
            assert a.direction_norm == pytest.approx(b.direction_norm, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# StepInfo and bad input
# ---------------------------------------------------------------------------------------------


def test_step_info_reports_the_regularizer():
    model = make_model(seed=16, dtype=torch.float64)
    x = data(16)
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=0.1), mogd.GAPO(p=2))
    losses, R = objectives(model, x, k=2)
    _, _, J, r = reference(model, losses, R, 2.0)
    info = opt.step(losses, regularizer=R)
    assert isinstance(info, StepInfo) and repr(info).startswith("StepInfo(<on device")
    d = info.as_dict(names=("helpful", "harmless"))
    assert {"regularizer_norm", "regularizer_cosine/helpful", "regularizer_cosine/harmless"} <= set(
        d
    )
    assert d["regularizer_norm"] == pytest.approx(float(r.norm()), rel=1e-10)
    cos = cosines(J, r)
    assert d["regularizer_cosine/helpful"] == pytest.approx(float(cos[0]), rel=1e-9)
    assert d["regularizer_cosine/harmless"] == pytest.approx(float(cos[1]), rel=1e-9)
    assert info.gram.shape == (2, 2) and info.weights.shape == (2,)
    assert f"regularizer_norm={info.regularizer_norm!r})" in repr(info)
    plain = opt.step(objectives(model, x, k=2)[0])
    assert plain.regularizer_norm is None and not any(
        "regularizer" in key for key in plain.as_dict()
    )
    assert "regularizer" not in repr(plain)


def test_bad_regularizer_arguments_raise_with_the_fix():
    model = make_model(seed=13)
    x = torch.randn(8, 6)
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=0.1))
    losses, R = objectives(model, x, k=2)
    with pytest.raises(TypeError, match="regularizer must be one scalar tensor"):
        opt.step(losses, regularizer=0.5)
    with pytest.raises(TypeError, match="pass their sum"):
        opt.step(losses, regularizer=[R, R])
    with pytest.raises(ValueError, match=r"regularizer has shape \(8,\)"):
        opt.step(losses, regularizer=model(x)[:, 0])
    with pytest.raises(ValueError, match="regularizer does not require grad.*regularizer=None"):
        opt.step(losses, regularizer=torch.tensor(1.0))
    with pytest.raises(
        ValueError, match=r"regularizer= comes with the losses.*opt.regularizer\(\)"
    ):
        opt.step(regularizer=R)
    with pytest.raises(TypeError, match="regularizer must be one scalar tensor"):
        opt.backward(losses, regularizer="kl")
    # passed as an argument, then in the context (and the other way round)
    opt.backward(losses, regularizer=R)
    with pytest.raises(ValueError, match="already passed.*one way"):
        with opt.regularizer():
            pass
    opt.zero_grad()
    losses, R = objectives(model, x, k=2)
    with opt.regularizer():
        R.backward(retain_graph=True)
    with pytest.raises(
        ValueError, match=r"`with opt.regularizer\(\):` backward passes: use one form"
    ):
        opt.step(losses, regularizer=R)
    opt.zero_grad()
    with pytest.raises(RuntimeError, match=r"regularizer\(\) entered inside objective\(0\)"):
        with opt.objective(0), opt.regularizer():
            pass
    opt.zero_grad()
    with opt.regularizer():
        objectives(model, x, k=2)[1].backward()
    with pytest.raises(ValueError, match="no per-objective gradients"):
        opt.step()  # a regularizer alone is no step
    probe = MOGD(torch.optim.SGD(model.parameters(), lr=0.1), probe=model[2])
    with pytest.raises(
        ValueError, match=r"probe mode .*regularizer=R.*instead of opt.regularizer\(\)"
    ):
        with probe.regularizer():
            pass


# ---------------------------------------------------------------------------------------------
# CUDA: the Triton passes over k + 1 rows, and no synchronisation (skipped without a GPU)
# ---------------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_update_equals_float64_reference():
    model = make_model(seed=20).cuda()
    x = torch.randn(256, 6, device="cuda")
    lr, max_norm = 0.05, 0.05
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=lr), mogd.GAPO(p=1), max_norm=max_norm)
    for _ in range(3):
        losses, R = objectives(model, x, k=3)
        w, d, J, r = reference(model, losses, R, 1.0)
        expected = flat(model.parameters()) - lr * clipped(d, max_norm)
        opt.zero_grad()
        info = opt.step(losses, regularizer=R)
        torch.testing.assert_close(info.weights, w, rtol=1e-5, atol=1e-7)
        assert info.regularizer_norm == pytest.approx(float(r.norm()), rel=1e-5)
        assert info.direction_norm == pytest.approx(float(d.norm()), rel=1e-5)
        assert (flat(model.parameters()) - expected).abs().max() < 1e-6


@cuda
@pytest.mark.parametrize("probe", [False, True])
def test_cuda_step_with_a_regularizer_never_synchronises(probe):
    """torch.cuda.set_sync_debug_mode("error"): a fused-AdamW step with a regularizer, clipping and
    a skip caused by a non-finite R runs without a device->host synchronisation."""
    model = make_model(seed=32).cuda()
    x = torch.randn(64, 6, device="cuda")
    inner = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    opt = MOGD(inner, mogd.GAPO(p=1), max_norm=1.0, probe=model[2] if probe else None)
    infos = []
    for step in range(4):  # the first step builds the bank and may allocate
        losses, R = objectives(model, x, k=3)
        if step == 3:
            R = R + math.nan * model(x).sum()
        opt.zero_grad()
        if step == 0:
            infos.append(opt.step(losses, regularizer=R))
            continue
        torch.cuda.set_sync_debug_mode("error")
        try:
            infos.append(opt.step(losses, regularizer=R))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert [i.skipped for i in infos] == [False, False, False, True]
