"""MOGD as a torch.optim.Optimizer: every LR scheduler, zero_grad, shared param_groups and
state, step hooks, bit-for-bit state_dict resume, AMP GradScaler (unscale before the Gram, planted
infs skip and back off exactly as the scaler would) and accelerate.Accelerator().prepare.

References are plain torch optimizers driven the same way (the LR a scheduler sets, the parameters of
an unscaled run), never MOGD itself.
"""

import inspect
import io
import math
import warnings

import pytest
import torch
import torch.optim.lr_scheduler as lrs

import mogd
from mogd.optimizer import MOGD


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


X = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))


def two_losses(model, x=X, bad=None, value=math.inf):
    out = model(x)
    losses = [out[:, 0].pow(2).mean(), (out[:, 1] - 1).pow(2).mean()]
    if bad is not None:
        losses[bad] = losses[bad] + value * out[:, 0].sum()
    return losses


# ---------------------------------------------------------------------------------------------
# LR schedulers
# ---------------------------------------------------------------------------------------------

SCHEDULERS = {
    "LambdaLR": lambda o: lrs.LambdaLR(o, lambda e: 0.9**e),
    "MultiplicativeLR": lambda o: lrs.MultiplicativeLR(o, lambda e: 0.8),
    "StepLR": lambda o: lrs.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o: lrs.MultiStepLR(o, milestones=[1, 3], gamma=0.5),
    "ConstantLR": lambda o: lrs.ConstantLR(o, factor=0.5, total_iters=2),
    "LinearLR": lambda o: lrs.LinearLR(o, start_factor=0.2, total_iters=3),
    "ExponentialLR": lambda o: lrs.ExponentialLR(o, gamma=0.7),
    "SequentialLR": lambda o: lrs.SequentialLR(
        o, [lrs.ConstantLR(o, factor=0.5, total_iters=2), lrs.ExponentialLR(o, 0.9)], [2]
    ),
    "PolynomialLR": lambda o: lrs.PolynomialLR(o, total_iters=4, power=2.0),
    "CosineAnnealingLR": lambda o: lrs.CosineAnnealingLR(o, T_max=3),
    "ChainedScheduler": lambda o: lrs.ChainedScheduler(
        [lrs.ConstantLR(o, factor=0.5, total_iters=2), lrs.ExponentialLR(o, 0.9)]
    ),
    "ReduceLROnPlateau": lambda o: lrs.ReduceLROnPlateau(o, patience=0, factor=0.5),
    "CyclicLR": lambda o: lrs.CyclicLR(o, base_lr=1e-3, max_lr=1e-2, step_size_up=2),
    "CosineAnnealingWarmRestarts": lambda o: lrs.CosineAnnealingWarmRestarts(o, T_0=2),
    "OneCycleLR": lambda o: lrs.OneCycleLR(o, max_lr=1e-2, total_steps=10),
}


def test_every_scheduler_is_covered():
    found = {
        name
        for name, cls in vars(lrs).items()
        if inspect.isclass(cls)
        and (issubclass(cls, lrs.LRScheduler) or cls is lrs.ReduceLROnPlateau)
        and name not in ("LRScheduler", "_LRScheduler")
    }
    assert found <= set(SCHEDULERS), (
        f"add the new schedulers to SCHEDULERS: {found - set(SCHEDULERS)}"
    )


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_drives_mogd_like_the_plain_optimizer(name):
    plain_model, model = make_model(), make_model()
    plain = torch.optim.AdamW(plain_model.parameters(), lr=1e-2)
    opt = MOGD(torch.optim.AdamW(model.parameters(), lr=1e-2))
    sched_plain, sched = SCHEDULERS[name](plain), SCHEDULERS[name](opt)
    with warnings.catch_warnings():
        # a scheduler that did not see MOGD.step() warns "lr_scheduler.step() before optimizer.step()"
        warnings.simplefilter("error", UserWarning)
        for it in range(6):
            plain.zero_grad()
            sum(two_losses(plain_model)).backward()
            plain.step()
            opt.zero_grad()
            opt.step(two_losses(model))
            metric = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5][it]
            if name == "ReduceLROnPlateau":
                sched_plain.step(metric)
                sched.step(metric)
            else:
                sched_plain.step()
                sched.step()
            assert [g["lr"] for g in opt.inner.param_groups] == [
                g["lr"] for g in plain.param_groups
            ]


# ---------------------------------------------------------------------------------------------
# shared param_groups / state, zero_grad, hooks
# ---------------------------------------------------------------------------------------------


def test_param_groups_state_and_defaults_are_the_inner_optimizers():
    model = make_model()
    inner = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opt = MOGD(inner)
    assert opt.param_groups is inner.param_groups
    assert opt.defaults is inner.defaults
    opt.step(two_losses(model))
    assert opt.state is inner.state and len(opt.state) == 4
    opt.param_groups[0]["lr"] = 0.5
    assert inner.param_groups[0]["lr"] == 0.5


def test_add_param_group_trains_the_new_parameters():
    model = make_model()
    extra = torch.nn.Parameter(torch.ones(3))
    opt = MOGD(torch.optim.SGD(model[0].parameters(), lr=0.1))
    opt.step(two_losses(model))
    opt.add_param_group({"params": [extra, *model[2].parameters()]})
    before = extra.detach().clone()
    out = model(X)
    opt.zero_grad()
    info = opt.step(
        [out[:, 0].pow(2).mean() + extra.sum(), (out[:, 1] - extra.mean()).pow(2).mean()]
    )
    assert not info.skipped and not torch.equal(extra, before)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(set_to_none):
    model = make_model()
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=0.1))
    opt.step(two_losses(model))
    assert all(p.grad is not None for p in model.parameters())
    with opt.objective(0):
        two_losses(model)[0].backward()
    opt.zero_grad(set_to_none=set_to_none)
    for p in model.parameters():
        assert p.grad is None if set_to_none else torch.count_nonzero(p.grad) == 0
    with pytest.raises(ValueError, match="no per-objective gradients"):
        opt.step()  # zero_grad discarded the pending objective too


def test_step_hooks_run_once_per_step():
    model = make_model()
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=0.1))
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    opt.step(two_losses(model))
    assert calls == ["pre", "post"]


# ---------------------------------------------------------------------------------------------
# state_dict
# ---------------------------------------------------------------------------------------------


def train(model, opt, sched, steps, form):
    info = None
    for _ in range(steps):
        opt.zero_grad()
        if form == "losses":
            info = opt.step(two_losses(model))
        else:
            for i in range(2):
                with opt.objective(i):
                    two_losses(model)[i].backward()
            info = opt.step()
        sched.step()
    return info


def build(seed=0):
    model = make_model(seed)
    opt = MOGD(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1), mogd.GAPO(p=2))
    sched = lrs.CosineAnnealingLR(opt, T_max=7)
    return model, opt, sched


@pytest.mark.parametrize("form", ["losses", "objective"])
def test_state_dict_resume_is_bit_for_bit(form):
    ref_model, ref_opt, ref_sched = build()
    ref_info = train(ref_model, ref_opt, ref_sched, 6, form)

    model, opt, sched = build()
    train(model, opt, sched, 3, form)
    buf = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf
    )
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    assert ckpt["opt"]["mogd"]["step"] == 3 and ckpt["opt"]["mogd"]["k"] == 2

    model2, opt2, sched2 = build(seed=123)  # different init: everything must come from the ckpt
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    assert opt2.state_dict()["mogd"]["weights"] == ckpt["opt"]["mogd"]["weights"]
    info = train(model2, opt2, sched2, 3, form)
    for p, q in zip(ref_model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(info.weights, ref_info.weights)
    assert opt2.state_dict()["mogd"]["step"] == 6


def test_load_state_dict_checks():
    model, opt, _ = build()
    opt.step(two_losses(model))
    sd = opt.state_dict()
    other = MOGD(torch.optim.AdamW(make_model().parameters(), lr=1e-2), mogd.MGDA())
    with pytest.warns(UserWarning, match="GAPO"):
        other.load_state_dict(sd)
    three = MOGD(torch.optim.AdamW(model.parameters(), lr=1e-2), mogd.GAPO(p=2))
    out = model(X)
    three.step([out[:, 0].mean(), out[:, 1].mean(), out.pow(2).mean()])
    with pytest.raises(ValueError, match="k = 2 objectives"):
        three.load_state_dict(sd)
    plain = torch.optim.AdamW(model.parameters(), lr=1e-2).state_dict()
    fresh = MOGD(torch.optim.AdamW(model.parameters(), lr=1e-2))
    fresh.load_state_dict(plain)  # an inner-only checkpoint is accepted
    assert fresh.state_dict()["mogd"]["step"] == 0


# ---------------------------------------------------------------------------------------------
# AMP GradScaler
# ---------------------------------------------------------------------------------------------


def scaled_step(opt, model, scaler, bad=None, value=math.inf):
    opt.zero_grad()
    for i in range(2):
        with opt.objective(i):
            scaler.scale(
                two_losses(model, bad=bad if bad == i else None, value=value)[i]
            ).backward()
    info = scaler.step(opt)
    scaler.update()
    return info


def test_grad_scaler_unscales_before_the_gram():
    ref_model, model = make_model(), make_model()
    ref = MOGD(torch.optim.AdamW(ref_model.parameters(), lr=1e-2), mogd.GAPO(p=2))
    opt = MOGD(torch.optim.AdamW(model.parameters(), lr=1e-2), mogd.GAPO(p=2))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for _ in range(4):
        ref.zero_grad()
        ref_info = ref.step(two_losses(ref_model))
        info = scaled_step(opt, model, scaler)
        # GAPO(p=2) weights of scaled gradients would be off by s^(1-p) = 2^-12
        torch.testing.assert_close(info.weights, ref_info.weights, rtol=1e-6, atol=0)
        torch.testing.assert_close(info.gram, ref_info.gram, rtol=1e-6, atol=0)
    for p, q in zip(ref_model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bad", [0, 1])  # 0: not the row p.grad shows the scaler; 1: that row
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_grad_scaler_planted_inf_skips_and_backs_off(bad, value):
    model = make_model()
    opt = MOGD(torch.optim.AdamW(model.parameters(), lr=1e-2))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    scaled_step(opt, model, scaler)
    scale = scaler.get_scale()
    params = [p.detach().clone() for p in model.parameters()]
    state = {p: {n: t.clone() for n, t in s.items()} for p, s in opt.state.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the scaler's skips are routine: no MOGD warning
        info = scaled_step(opt, model, scaler, bad=bad, value=value)
    assert info.skipped
    assert scaler.get_scale() == scale * 0.5  # backoff_factor, as for a plain optimizer
    for p, q in zip(model.parameters(), params, strict=True):
        assert torch.equal(p, q)
    for p, s in opt.state.items():
        for n, t in s.items():
            assert torch.equal(t, state[p][n])
    info = scaled_step(opt, model, scaler)  # and training resumes
    assert not info.skipped and scaler.get_scale() == scale


def test_grad_scaler_misuse_is_explained():
    model = make_model()
    opt = MOGD(torch.optim.SGD(model.parameters(), lr=0.1))
    scaler = torch.amp.GradScaler("cpu")
    for i in range(2):
        with opt.objective(i):
            scaler.scale(two_losses(model)[i]).backward()
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="drop the unscale_ call"):
        scaler.step(opt)
    scaler2 = torch.amp.GradScaler("cpu")
    opt.zero_grad()
    with opt.objective(0):
        scaler2.scale(two_losses(model)[0]).backward()
    with pytest.raises(RuntimeError, match="without losses"):
        scaler2.step(opt, two_losses(model))


# ---------------------------------------------------------------------------------------------
# accelerate
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def accelerator():
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState, GradientState

    yield accelerate.Accelerator(cpu=True)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_accelerate_prepare(accelerator):
    ref_model = make_model()
    ref = MOGD(torch.optim.AdamW(ref_model.parameters(), lr=1e-2), mogd.GAPO(p=1))
    model = make_model()
    opt = MOGD(torch.optim.AdamW(model.parameters(), lr=1e-2), mogd.GAPO(p=1))
    pmodel, popt = accelerator.prepare(model, opt)
    assert popt.optimizer is opt
    for _ in range(2):
        ref.zero_grad()
        ref_info = ref.step(two_losses(ref_model))
        popt.zero_grad()
        popt.step(two_losses(pmodel))  # AcceleratedOptimizer.step(closure) passes the losses on
        assert torch.equal(opt.last_info.weights, ref_info.weights)
    ref.zero_grad()
    for i in range(2):
        with ref.objective(i):
            two_losses(ref_model)[i].backward()
    ref.step()
    popt.zero_grad()
    for i in range(2):
        with opt.objective(i):
            accelerator.backward(two_losses(pmodel)[i])
    popt.step()
    for p, q in zip(ref_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q)
    sd = popt.state_dict()
    assert sd["mogd"]["step"] == 3
    popt.load_state_dict(sd)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_autocast_fp16_grad_scaler():
    model = make_model().cuda()
    opt = MOGD(torch.optim.AdamW(model.parameters(), lr=1e-3))
    # 2^8, not the default 2^16: fp16 activation gradients of this model would overflow at 2^16,
    # and those (legitimate) skips are not what this test is about
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**8, growth_interval=1000)
    x = X.cuda()

    def step(bad=None):
        opt.zero_grad()
        for i in range(2):
            with opt.objective(i):
                with torch.autocast("cuda", dtype=torch.float16):
                    loss = two_losses(model, x, bad=bad if bad == i else None)[i]
                scaler.scale(loss.float()).backward()
        info = scaler.step(opt)
        scaler.update()
        return info

    assert not step().skipped
    scale = scaler.get_scale()
    params = [p.detach().clone() for p in model.parameters()]
    assert step(bad=0).skipped and scaler.get_scale() == scale / 2
    for p, q in zip(model.parameters(), params, strict=True):
        assert torch.equal(p, q)
    info = step()
    assert not info.skipped and torch.isfinite(info.weights).all()
