"""MOGD.step's tail: clipping (max_norm), the device path that never reads a value back to the host,
mixed precision in every mode (GradScaler through opt.backward, bf16 autocast), and the profiler
ranges of the step's phases.

References: d, ‖d‖ and the clipped update are computed here in float64 from torch.autograd.grad;
clipping is compared with torch.nn.utils.clip_grad_norm_ applied to that d. "No host read" is
observed with a dispatch mode that records every aten op that moves a value to Python
(_local_scalar_dense: .item(), bool(), float(), int()), plus .tolist(), .numpy() and .cpu() patched
on torch.Tensor: on CPU this proves the logic a CUDA step relies on to never synchronise.
"""

import contextlib
import math
import warnings

import pytest
import torch
from test_optimizer import flat, flat_grads, make_losses, make_model
from torch.utils._python_dispatch import TorchDispatchMode

import mogd
from mogd.optimizer import MOGD

# ---------------------------------------------------------------------------------------------
# a host-read counter
# ---------------------------------------------------------------------------------------------

_HOST_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default}


class _Spy(TorchDispatchMode):
    def __init__(self, hits):
        super().__init__()
        self.hits = hits

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _HOST_OPS:
            self.hits.append(str(func))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def host_reads(monkeypatch):
    """Collects every read of a tensor's value by the host inside the block."""
    hits: list[str] = []
    for name in ("tolist", "numpy", "cpu", "item"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _name=name, _original=original, **k):
            hits.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    with _Spy(hits):
        yield hits
    monkeypatch.undo()


def nan_at(losses, model, x, i):
    losses[i] = losses[i] + math.nan * model(x)[:, 0].sum()
    return losses


def snapshot(model, opt):
    params = [p.detach().clone() for p in model.parameters()]
    state = {id(p): {n: t.clone() for n, t in s.items()} for p, s in opt.state.items()}
    return params, state


def assert_same(model, opt, snap):
    params, state = snap
    for p, q in zip(model.parameters(), params, strict=True):
        assert torch.equal(p, q)
    for p, s in opt.state.items():
        for n, t in s.items():
            assert torch.equal(t, state[id(p)][n]), n


# ---------------------------------------------------------------------------------------------
# the device path: no host reads, bit-identical skips, the same training as the host path
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("probe", [False, True])
def test_device_step_never_reads_the_host_and_equals_the_host_path(monkeypatch, k, probe):
    x = torch.randn(16, 6)
    runs = {}
    for where in ("device", "host"):
        model = make_model(seed=30)
        inner = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
        opt = MOGD(
            inner, mogd.GAPO(p=1), max_norm=0.3, weights_on=where, probe=model[2] if probe else None
        )
        infos = []
        for step in range(4):
            losses = make_losses(model, x, k=k)
            if step == 2:
                losses = nan_at(losses, model, x, k - 1)
                snap = snapshot(model, opt)
            opt.zero_grad()
            if where == "device":
                with host_reads(monkeypatch) as hits:
                    infos.append(opt.step(losses))
                assert hits == [], hits
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # the host path warns on a skip
                    infos.append(opt.step(losses))
            if step == 2:
                assert_same(model, opt, snap)  # a skip leaves parameters and AdamW state alone
        assert [i.skipped for i in infos] == [False, False, True, False]
        assert opt.state_dict()["mogd"]["step"] == 3
        runs[where] = (flat(model.parameters()), infos)
    (p_dev, i_dev), (p_host, i_host) = runs["device"], runs["host"]
    torch.testing.assert_close(p_dev, p_host, rtol=0, atol=1e-6)
    for a, b in zip(i_dev, i_host, strict=True):
        if not a.skipped:
            torch.testing.assert_close(a.weights, b.weights, rtol=1e-6, atol=1e-9)
            assert a.direction_norm == pytest.approx(b.direction_norm, rel=1e-6)
            assert a.kkt_residual is not None and a.kkt_residual <= 1e-9


def test_device_step_with_a_plain_inner_optimizer_reads_one_flag(monkeypatch):
    """Without found_inf support (here SGD, which itself reads nothing) the skip is decided on the
    host: exactly one read per step."""
    model = make_model(seed=31)
    x = torch.randn(16, 6)
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=1e-2), weights_on="device")
    opt.step(make_losses(model, x))
    opt.zero_grad()
    with host_reads(monkeypatch) as hits:
        opt.step(make_losses(model, x))
    assert hits == ["item", "aten._local_scalar_dense.default"], hits  # one .item(), of the flag


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("probe", [False, True])
def test_cuda_step_never_synchronises(k, probe):
    """torch.cuda.set_sync_debug_mode("error") turns every device->host synchronisation into an
    error: a MOGD step with nonfinite="skip", a fused AdamW, clipping and a skipped step runs
    through without one as long as nobody reads the StepInfo."""
    model = make_model(seed=32).cuda()
    x = torch.randn(64, 6, device="cuda")
    inner = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    opt = MOGD(inner, mogd.GAPO(p=1), max_norm=1.0, probe=model[2] if probe else None)
    infos = []
    for step in range(4):  # the first step builds the bank and may allocate
        losses = make_losses(model, x, k=k)
        if step == 3:
            losses = nan_at(losses, model, x, 0)
        opt.zero_grad()
        if step == 0:
            infos.append(opt.step(losses))
            continue
        torch.cuda.set_sync_debug_mode("error")
        try:
            infos.append(opt.step(losses))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert [i.skipped for i in infos] == [False, False, False, True]


# ---------------------------------------------------------------------------------------------
# clipping
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights_on", ["host", "device"])
@pytest.mark.parametrize("max_norm", [1e-3, 0.05, 1e6])
def test_max_norm_clips_d_like_clip_grad_norm(weights_on, max_norm):
    model = make_model(seed=33, dtype=torch.float64)
    x = torch.randn(32, 6, dtype=torch.float64)
    lr = 0.1
    opt = MOGD(
        torch.optim.SGD(model.parameters(), lr=lr),
        mogd.GAPO(p=2),
        max_norm=max_norm,
        weights_on=weights_on,
    )
    for _ in range(3):
        params = list(model.parameters())
        losses = make_losses(model, x)
        J = flat_grads(losses, params)
        n = J.norm(dim=1)
        w = mogd.GAPO(p=2)(J @ J.T)
        d = w @ J
        ref = torch.nn.Parameter(torch.zeros_like(d))
        ref.grad = d.clone()
        total = torch.nn.utils.clip_grad_norm_([ref], max_norm)  # the clipping every trainer uses
        expected = flat(params) - lr * ref.grad
        opt.zero_grad()
        info = opt.step(losses)
        assert info.direction_norm == pytest.approx(float(total), rel=1e-10)
        assert info.direction_norm == pytest.approx(float(d.norm()), rel=1e-10)
        torch.testing.assert_close(info.norms, n, rtol=1e-10, atol=0)
        torch.testing.assert_close(flat(model.parameters()), expected, rtol=0, atol=1e-12)
        assert float(ref.grad.norm()) <= max_norm * (1 + 1e-12)


def test_max_norm_in_probe_mode_clips_the_final_gradient():
    model = make_model(seed=34, dtype=torch.float64)
    head = model[2]
    x = torch.randn(32, 6, dtype=torch.float64)
    lr, max_norm = 0.1, 0.02
    opt = MOGD(
        torch.optim.SGD(model.parameters(), lr=lr), mogd.MGDA(), probe=head, max_norm=max_norm
    )
    losses = make_losses(model, x)
    Jh = flat_grads(losses, list(head.parameters()))
    w = mogd.min_norm(Jh @ Jh.T).weights
    g = w @ flat_grads(losses, list(model.parameters()))  # Σ w_i ∇L_i over the whole model
    coef = min(1.0, max_norm / (float(g.norm()) + 1e-6))
    expected = flat(model.parameters()) - lr * coef * g
    info = opt.step(losses)
    assert info.direction_norm == pytest.approx(float(g.norm()), rel=1e-10)
    torch.testing.assert_close(flat(model.parameters()), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, True, "1"])
def test_max_norm_must_be_a_positive_number(bad):
    model = make_model()
    with pytest.raises(ValueError, match="max_norm"):
        MOGD(torch.optim.SGD(model.parameters(), lr=0.1), max_norm=bad)


# ---------------------------------------------------------------------------------------------
# mixed precision in every mode
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("probe", [False, True])
def test_grad_scaler_through_backward_equals_the_unscaled_step(probe):
    x = torch.randn(16, 6)
    ref_model, model = make_model(seed=35), make_model(seed=35)
    ref = MOGD(
        torch.optim.AdamW(ref_model.parameters(), lr=1e-2),
        mogd.GAPO(p=2),
        max_norm=0.5,
        probe=ref_model[2] if probe else None,
    )
    opt = MOGD(
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        mogd.GAPO(p=2),
        max_norm=0.5,
        probe=model[2] if probe else None,
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for _ in range(3):
        ref.zero_grad()
        ref_info = ref.step(make_losses(ref_model, x))
        opt.zero_grad()
        opt.backward(make_losses(model, x), scaler=scaler)
        info = scaler.step(opt)
        scaler.update()
        # GAPO(p=2) weights of scaled gradients would be off by s^(1-p) = 2^-12
        torch.testing.assert_close(info.weights, ref_info.weights, rtol=1e-5, atol=0)
        assert info.direction_norm == pytest.approx(ref_info.direction_norm, rel=1e-5)
    torch.testing.assert_close(
        flat(model.parameters()), flat(ref_model.parameters()), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("probe", [False, True])
def test_grad_scaler_skip_and_backoff_in_every_mode(probe):
    model = make_model(seed=36)
    x = torch.randn(16, 6)
    opt = MOGD(torch.optim.AdamW(model.parameters(), lr=1e-2), probe=model[2] if probe else None)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)

    def one(losses):
        opt.zero_grad()
        opt.backward(losses, scaler=scaler)
        info = scaler.step(opt)
        scaler.update()
        return info

    one(make_losses(model, x))
    scale = scaler.get_scale()
    snap = snapshot(model, opt)
    losses = make_losses(model, x)
    losses[0] = losses[0] + math.inf * model[0].weight.sum()  # outside the probe, too
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the scaler's skips are routine: no MOGD warning
        info = one(losses)
    assert info.skipped and scaler.get_scale() == scale * 0.5
    assert_same(model, opt, snap)
    assert not one(make_losses(model, x)).skipped


def test_step_with_losses_under_a_grad_scaler_explains_the_fix():
    model = make_model()
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=0.1), probe=model[2])
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(torch.ones(()))  # what scaling any loss does first: the scale exists
    with pytest.raises(RuntimeError, match=r"opt.backward\(\[loss_0, ...\], scaler=scaler\)"):
        scaler.step(opt, make_losses(model, torch.randn(4, 6)))


@pytest.mark.parametrize("probe", [False, True])
def test_bf16_autocast_needs_no_scaler(probe):
    x = torch.randn(32, 6)
    ref_model, model = make_model(seed=37), make_model(seed=37)
    ref = MOGD(
        torch.optim.SGD(ref_model.parameters(), lr=0.05), probe=ref_model[2] if probe else None
    )
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=0.05), probe=model[2] if probe else None)
    ref_info = ref.step(make_losses(ref_model, x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = make_losses(model, x)
    info = opt.step(losses)
    assert not info.skipped
    torch.testing.assert_close(info.weights, ref_info.weights, rtol=5e-2, atol=0)
    torch.testing.assert_close(
        flat(model.parameters()), flat(ref_model.parameters()), rtol=0, atol=5e-3
    )


# ---------------------------------------------------------------------------------------------
# profiler ranges
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("probe", [False, True])
def test_step_phases_are_profiler_ranges(probe):
    model = make_model(seed=38)
    opt = MOGD(
        torch.optim.SGD(model.parameters(), lr=0.1), max_norm=1.0, probe=model[2] if probe else None
    )
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step(make_losses(model, torch.randn(8, 6)))
    names = {e.name for e in prof.events()}
    assert {"mogd.gram", "mogd.weights", "mogd.combine", "mogd.clip", "mogd.inner_step"} <= names


def test_probe_backward_accumulates_micro_batches_and_a_bad_one_skips():
    """opt.backward per micro-batch (TRL's gradient accumulation): each micro-batch is weighted by
    its own probe Gram and the weighted gradients add up; one non-finite micro-batch skips the step."""
    model = make_model(seed=39, dtype=torch.float64)
    head = model[2]
    xs = [torch.randn(8, 6, dtype=torch.float64) for _ in range(2)]
    lr = 0.1
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=lr), mogd.MGDA(), probe=head)
    params = list(model.parameters())
    total = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    for x in xs:
        losses = make_losses(model, x)
        Jh = flat_grads(losses, list(head.parameters()))
        total += mogd.min_norm(Jh @ Jh.T).weights @ flat_grads(losses, params)
    expected = flat(params) - lr * total
    for x in xs:
        opt.backward(make_losses(model, x))
    assert not opt.step().skipped
    torch.testing.assert_close(flat(model.parameters()), expected, rtol=0, atol=1e-12)
    opt.zero_grad()
    snap = snapshot(model, opt)
    opt.backward(nan_at(make_losses(model, xs[0]), model, xs[0], 1))
    opt.backward(make_losses(model, xs[1]))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        assert opt.step().skipped
    assert_same(model, opt, snap)


@cuda
@pytest.mark.parametrize("probe", [False, True])
def test_cuda_fp16_autocast_with_grad_scaler_in_every_mode(probe):
    """fp16 autocast + GradScaler through opt.backward on the device path: the weights match the
    fp32 step's to fp16 accuracy, and the step is taken."""
    x = torch.randn(64, 6, device="cuda")
    ref_model, model = make_model(seed=40).cuda(), make_model(seed=40).cuda()
    ref = MOGD(
        torch.optim.AdamW(ref_model.parameters(), lr=1e-2), probe=ref_model[2] if probe else None
    )
    inner = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    opt = MOGD(inner, probe=model[2] if probe else None)
    scaler = torch.amp.GradScaler("cuda")
    ref_info = ref.step(make_losses(ref_model, x))
    with torch.autocast("cuda", dtype=torch.float16):
        losses = make_losses(model, x)
    opt.backward(losses, scaler=scaler)
    info = scaler.step(opt)
    scaler.update()
    assert not info.skipped
    torch.testing.assert_close(info.weights, ref_info.weights, rtol=2e-2, atol=0)
