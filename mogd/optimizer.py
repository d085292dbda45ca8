"""MOGD: a torch.optim.Optimizer that turns k objectives into one Pareto descent direction.

One step (DESIGN §1, Li et al. 2025 §3), :meth:`MOGD.step` top to bottom:

1. **collect** the k per-objective gradients in a flat gradient bank (:mod:`mogd.bank`): one backward
   per objective (``opt.step(losses)``, ``opt.backward(losses)`` or ``with opt.objective(i):``),
   and a regularizer's gradient r = ∇R as one more row (``regularizer=R``, ``opt.regularizer()``);
2. **Gram** G_ij = ⟨g_i, g_j⟩ in one fused pass (:func:`mogd.gram`), global across ranks; with a
   regularizer the pass also gives ⟨g_i, r⟩ and ‖r‖² (the extended Gram of :mod:`mogd.update`);
3. **weights** w = weighting(G) (GAPO Eq. 6–7, P-GAPO Eq. 8, MGDA) on the objectives' block alone,
   or a skip when anything in the Gram is not finite;
4. **combine** d = Σ_i w_i g_i (+ r) in one fused pass into the ``.grad`` the inner optimizer reads;
5. **clip** d to ‖d‖ ≤ ``max_norm`` (folded into the coefficients: ‖d‖² comes from the Gram);
6. **inner step**, skipped on non-finite gradients; the result is a lazy :class:`StepInfo`.

Probe mode (paper App. B) collects the per-objective gradients of a small probe only (e.g. the LM
head), and "combine" is ONE backward of Σ_i w_i L_i (+ R) through the whole model; clipping then
measures the final gradient. Both modes share the tail (steps 5–6).

On CUDA nothing in a step reads a value back to the host (see :class:`MOGD`, ``weights_on``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch.optim import Optimizer
from torch.profiler import record_function

from mogd import amp, arguments, distributed, update
from mogd.bank import REGULARIZER, GradientBank
from mogd.collect import Collector
from mogd.ops import combine, gram
from mogd.probe import Probe, clip_final_gradient_
from mogd.step_info import StepInfo, skip_message
from mogd.weighting import GAPO, Weighting, WeightingResult
from mogd.wrapper import WrappedOptimizer

__all__ = ["MOGD", "StepInfo"]


class MOGD(WrappedOptimizer):
    """Multi-objective gradient descent around any ``torch.optim`` optimizer.

    ``MOGD(inner, weighting)`` turns k losses into the direction d = Σ_i w_i g_i with w = weighting(G),
    G the Gram matrix of the per-objective gradients g_i (GAPO: Li et al., ACL 2025, arXiv 2507.01915,
    Eq. 6–8), and lets ``inner`` take its step along d. It shares ``param_groups``, ``state`` and
    ``defaults`` with ``inner``, so LR schedulers, ``zero_grad``, ``state_dict``, ``GradScaler`` and
    ``accelerate`` work on it as on any optimizer.

    Args:
        inner: the optimizer that applies d (AdamW, SGD, ...). ``fused=True`` optimizers skip
            non-finite steps on the device (no host synchronisation at all).
        weighting: the map G ↦ w: :class:`mogd.GAPO` (default ``GAPO(p=1)``), ``PGAPO``, ``MGDA``,
            ``Linear``.
        probe: a module or parameters: per-objective gradients of these only, then one backward of
            Σ_i w_i L_i through everything (paper App. B). Needs the losses (``step(losses)`` or
            ``backward(losses)``).
        max_norm: clip d to this global L2 norm (all parameter groups, all ranks, sharded or
            replicated), as ``torch.nn.utils.clip_grad_norm_`` would clip it:
            d ← d · min(1, max_norm / (‖d‖ + 1e-6)). ``StepInfo.direction_norm`` is ‖d‖ before.
        nonfinite: "skip" (default: leave parameters and optimizer state untouched; warns when the
            host learns of it) or "raise" (``FloatingPointError``) when a gradient holds NaN/Inf.
        process_group: average the per-objective gradients over this group (data parallelism
            without DDP). DDP-wrapped models and DTensor (FSDP2) parameters are detected.
        weights_on: "auto" (the device for CUDA gradients, the host's float64 solver otherwise),
            "device" (tensor operations wherever G is) or "host".

    A regularizer R every objective shares (a KL to a reference, an entropy bonus) stays out of the
    trade-off: d = Σ_i w_i g_i + ∇R, w solved on the objectives' Gram alone (see :meth:`regularizer`).

    Usage::

        opt = mogd.MOGD(torch.optim.AdamW(model.parameters(), lr=1e-5), mogd.GAPO(p=1), max_norm=1.0)
        opt.zero_grad()
        info = opt.step([loss_a, loss_b])      # or: with opt.objective(i): loss_i.backward(); opt.step()
        info = opt.step([loss_a, loss_b], regularizer=kl)
    """

    # GradScaler.step then calls step() with ``grad_scale`` / ``found_inf`` set on the optimizer,
    # instead of unscaling the one gradient per parameter it can see (only one objective's row).
    _step_supports_amp_scaling = True

    def __init__(
        self,
        inner: Optimizer,
        weighting: Weighting | None = None,
        *,
        probe: torch.nn.Module | Iterable[torch.Tensor] | None = None,
        max_norm: float | None = None,
        nonfinite: Literal["skip", "raise"] = "skip",
        process_group: Any = None,
        weights_on: Literal["auto", "device", "host"] = "auto",
    ) -> None:
        super().__init__(inner)
        weighting = GAPO(p=1.0) if weighting is None else arguments.check_weighting(weighting)
        arguments.check_choice("nonfinite", nonfinite, ("skip", "raise"))
        arguments.check_choice("weights_on", weights_on, ("auto", "device", "host"))
        self.weighting, self.nonfinite, self.weights_on = weighting, nonfinite, weights_on
        self.max_norm = arguments.check_max_norm(max_norm)
        self.process_group = process_group
        self._k: int | None = None
        self._steps: int | torch.Tensor = 0  # a device tensor while skips go undecided on the host
        self._last_weights: torch.Tensor | None = None
        self.last_info: StepInfo | None = None  # for wrappers that drop step()'s return
        self._collector = Collector()
        self._bank: GradientBank | None = None  # the full mode's (the collector's) or the probe's
        self._scaler_guard = amp.ScalerGuard()
        self._probed: dict[str, Any] | None = None  # probe mode: what backward() left for step()
        self._regularizer_passed = False  # regularizer= was given this step (full mode)
        self._probe = None if probe is None else Probe(probe, self.trainable_params())
        self._topology = distributed.detect(self.trainable_params(), process_group)
        if self._topology is not None:
            self._topology.adopt(full_mode=self._probe is None)

    # -- the torch.optim.Optimizer protocol (the rest is the inner optimizer's: mogd.wrapper) ------

    STATE_KEY = "mogd"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer; the bank is rebuilt at the next objective."""
        if self._bank is not None and self._bank.live:
            raise RuntimeError(
                "add_param_group() while per-objective gradients are pending; call it after step()"
            )
        self.inner.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the ``.grad`` of every parameter (as torch.optim does) and discard the
        per-objective gradients accumulated since the last step."""
        super().zero_grad(set_to_none)
        self._reset_cycle()

    def own_state_dict(self) -> dict[str, Any]:
        """MOGD's part of the state dict: step count, last weights, configuration."""
        last = None if self._last_weights is None else self._last_weights.cpu()
        return {
            "step": int(self._steps),
            "k": self._k,
            "weights": None if last is None or last.isnan().any() else last.tolist(),
            "weighting": repr(self.weighting),
            "nonfinite": self.nonfinite,
            "probe": self._probe is not None,
        }

    def check_own_state(self, own: dict[str, Any]) -> None:
        k = own.get("k")
        if k is not None and self._k is not None and k != self._k:
            raise ValueError(
                f"state_dict is for k = {k} objectives but this optimizer steps k = {self._k}"
            )
        if own.get("weighting") != repr(self.weighting):
            warnings.warn(
                f"loading MOGD state saved with weighting {own.get('weighting')} into one "
                f"using {self.weighting!r}; the new weighting is used from now on",
                stacklevel=3,
            )

    def load_own_state(self, own: dict[str, Any]) -> None:
        self._steps = int(own.get("step", 0))
        weights = own.get("weights")
        self._last_weights = None if weights is None else torch.tensor(weights, dtype=torch.float64)
        if own.get("k") is not None and self._k is None:
            self._set_k(int(own["k"]))

    def __repr__(self) -> str:
        mode = "full" if self._probe is None else f"probe({len(self._probe.params)} tensors)"
        topology = "pending" if self._topology is None else self._topology.describe()
        inner = "\n".join("    " + line for line in repr(self.inner).splitlines())
        return (
            f"MOGD(\n  weighting: {self.weighting!r}\n  objectives: {self._k or 'from first step'}"
            f"\n  mode: {mode}\n  max_norm: {self.max_norm}\n  nonfinite: {self.nonfinite!r}"
            f"\n  distributed: {topology}\n  steps: {int(self._steps)}\n  inner:\n{inner}\n)"
        )

    # -- collecting the per-objective gradients ----------------------------------------------------

    @contextmanager
    def objective(self, i: int) -> Iterator[None]:
        """Backward passes inside this context land in objective i's gradient.

        Calling it again for the same i before :meth:`step` accumulates (micro-batches). Objectives
        are numbered 0..k-1; k is fixed by the first step.
        """
        arguments.check_objective(i, self._k, probe_mode=self._probe is not None)
        with self._collecting(i):
            yield

    @contextmanager
    def regularizer(self) -> Iterator[None]:
        """Backward passes inside this context land in the regularizer's gradient r = ∇R.

        R is shared by every objective and stays out of the trade-off: the update is
        d = Σ_i w_i g_i + r with w = weighting(G) on the k objectives' Gram alone (r never enters G
        and gets no weight); ``max_norm`` clips the whole d. The accumulation form of
        ``step(losses, regularizer=R)``, beside :meth:`objective`; entered again before
        :meth:`step` it accumulates. Full mode only (probe mode takes ``regularizer=``).
        """
        arguments.check_regularizer_context(self._probe is not None, self._regularizer_passed)
        with self._collecting(REGULARIZER):
            yield

    @contextmanager
    def _collecting(self, row: int) -> Iterator[None]:
        """Backward passes inside land in ``row`` of the bank (an objective or the regularizer)."""
        bank = self._full_bank()
        self._collector.enter(row, bank)
        try:
            yield
        finally:
            self._collector.exit(row, bank)
            topology = self._ensure_topology()
            groups = topology.flag_groups(bank.shard_keys())
            self._scaler_guard.guard_(
                bank.row_tensors(row), lambda flag: topology.agree_(flag, groups)
            )

    def backward(
        self,
        losses: Sequence[torch.Tensor],
        *,
        regularizer: torch.Tensor | None = None,
        scaler: Any = None,
    ) -> None:
        """The backward passes of ``step(losses, regularizer=R)`` without the step: k of them (and
        R's) into the bank, or in probe mode the probe's k gradients, the weights and ONE backward
        of Σ_i w_i L_i + R.

        With ``scaler`` (a ``torch.amp.GradScaler``) the losses and R are scaled by it; then call
        ``scaler.step(opt)`` and ``scaler.update()``, which see (and skip on) every gradient.
        """
        checked = arguments.check_losses(losses, self._k)
        reg = arguments.check_regularizer(regularizer, checked)
        if self._k is None:
            self._set_k(len(checked))
        scale = None if scaler is None else amp.loss_scale(scaler, checked[0].device)
        if scaler is not None:
            checked = [scaler.scale(loss) for loss in checked]
            reg = None if reg is None else scaler.scale(reg)
        if self._probe is not None:
            self._probe_backward(checked, reg, scale)
            return
        if self._collector.pending:
            raise ValueError(
                "step(losses) or backward(losses) after `with opt.objective(i):` or "
                "`with opt.regularizer():` backward passes: use one form per step, the losses "
                "and regularizer= or the contexts (or call zero_grad() first)"
            )
        # the regularizer first: a bank that has not seen one yet allocates its block with the row
        passes = [*([(REGULARIZER, reg)] if reg is not None else []), *enumerate(checked)]
        for n, (row, loss) in enumerate(passes):
            with self._collecting(row):
                loss.backward(retain_graph=n < len(passes) - 1)
        self._regularizer_passed = reg is not None

    def _probe_backward(
        self,
        losses: list[torch.Tensor],
        regularizer: torch.Tensor | None,
        scale: torch.Tensor | None,
    ) -> None:
        """Probe mode's collect, Gram, weights and combine: the combine is ONE backward of
        Σ_i w_i L_i + R (paper App. B)."""
        assert self._probe is not None
        bank = self._probe_bank()
        self._probe.collect(losses, regularizer, bank)
        G, _, result, bad = self._weigh(bank, scale)
        bank.reset()
        with record_function("mogd.combine"):
            self._probe.weighted_backward(
                losses, regularizer, result, bad, decided=self._on_host(G), scaled=scale is not None
            )
        if self._probed is not None:  # accumulation: one bad micro-batch spoils the step
            bad = bad | self._probed["bad"].to(bad.device)
        self._probed = {"G": G, "result": result, "bad": bad}

    # -- the step ----------------------------------------------------------------------------------

    def step(  # type: ignore[override]
        self,
        losses: Sequence[torch.Tensor] | None = None,
        *,
        regularizer: torch.Tensor | None = None,
    ) -> StepInfo:
        """One multi-objective step; returns a :class:`StepInfo` (lazy: read it to sync).

        Args:
            losses: the k scalar losses (one shared graph or several). When None, the gradients of
                the ``opt.objective(i)`` / ``opt.regularizer()`` / ``opt.backward(losses)`` passes
                since the last step.
            regularizer: a scalar R outside the trade-off, with the losses: the update is
                d = Σ_i w_i g_i + ∇R, w solved on the objectives' Gram alone.
        """
        arguments.check_not_closure(losses)
        arguments.check_regularizer(regularizer, losses)
        try:
            return self._step(losses, regularizer)
        except BaseException:
            # GradScaler deletes the attributes it set only when step() returns; a raising step
            # must not leave them behind for the next scaler.step().
            for name in ("grad_scale", "found_inf"):
                if name in self.__dict__:
                    delattr(self, name)
            raise

    def _step(
        self, losses: Sequence[torch.Tensor] | None, regularizer: torch.Tensor | None
    ) -> StepInfo:
        scale, scaler_inf = amp.scaler_state(self, losses)
        self._scaler_guard.observe(scale is not None)
        if losses is not None:
            self.backward(losses, regularizer=regularizer)
        if self._probe is not None:
            return self._probe_tail(scale, scaler_inf)
        # collect -> Gram -> weights or skip -> combine -> clip (folded) -> inner step; G is the
        # extended Gram (k + 1 rows with a regularizer, mogd.update), weights come from its k×k block
        bank = self._full_bank()
        k = self._collector.close(bank, self._k)
        if self._k is None:
            self._set_k(k)
        G, divisor, result, bad = self._weigh(bank, scale, scaler_inf)
        coefficients = update.row_coefficients(result.weights.to(G.device), G)  # (w, 1 for ∇R)
        with record_function("mogd.clip"):
            norm = torch.where(bad, math.nan, update.direction_norm(G, coefficients))
            coef = update.clip_coef(norm, self.max_norm)
        with record_function("mogd.combine"), torch.no_grad():
            final = torch.where(bad, 0.0, coefficients * coef / divisor)
            for matrix, row0 in zip(bank.matrices(), bank.row_tensors(0), strict=True):
                out = row0 if isinstance(matrix, torch.Tensor) else [row0]
                combine(matrix, final, out=out, check=False)
        self._collector.point_at_direction(bank)
        return self._inner_step(G, result, bad, norm)

    def _probe_tail(self, scale: torch.Tensor | None, scaler_inf: torch.Tensor | None) -> StepInfo:
        """Probe mode after the weighted backward: unscale, measure, clip, step."""
        if self._probed is None:
            raise ValueError(
                "probe mode needs the losses: opt.step([loss_0, ..., loss_k-1]) or opt.backward([...])"
            )
        G, result, bad = self._probed["G"], self._probed["result"], self._probed["bad"]
        self._probed = None
        with record_function("mogd.clip"):
            norm = clip_final_gradient_(
                self.trainable_params(), self._ensure_topology(), self.max_norm, scale, G.device
            )
        bad = bad | ~torch.isfinite(norm)
        if scaler_inf is not None:
            bad = bad | (scaler_inf.to(bad.device) > 0)
        return self._inner_step(G, result, bad, norm)

    def _weigh(
        self, bank: GradientBank, scale: torch.Tensor | None, scaler_inf: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | float, WeightingResult, torch.Tensor]:
        """Steps 2–3 for either mode's bank: (G, W·S, weights, bad). G is the extended Gram of the
        bank's rows over every buffer, shard and rank (one all-reduce of it per shard set), of the
        rank-averaged, unscaled gradients: G(Σ_r S·g^(r)) / (W·S)²."""
        topology = self._ensure_topology()
        topology.sum_bank_(bank.all_tensors())
        with record_function("mogd.gram"):
            parts = [
                (gram(m), key) for m, key in zip(bank.matrices(), bank.shard_keys(), strict=True)
            ]
            G = topology.global_gram(parts)
            divisor = topology.world_size * (1.0 if scale is None else scale.to(G))
            G = G / divisor**2
        with record_function("mogd.weights"):
            result, bad = self._solve(G, scaler_inf)
        return G, divisor, result, bad

    def _solve(
        self, G: torch.Tensor, scaler_inf: torch.Tensor | None = None
    ) -> tuple[WeightingResult, torch.Tensor]:
        """(weights, bad): the weighting of the objectives' block of the extended Gram G, and
        whether the step must be skipped (anything non-finite in G, a regularizer's row included)."""
        bad = ~torch.isfinite(G).all()
        if scaler_inf is not None:
            bad = bad | (scaler_inf.to(bad.device) > 0)
        assert self._k is not None
        objectives = update.objectives_gram(G, self._k)
        if not self._on_host(G):
            finite = torch.where(torch.isfinite(objectives), objectives, 0.0)
            return self.weighting.solve_tensor(finite), bad
        if bad.item():
            return WeightingResult(torch.full((self._k,), math.nan, dtype=G.dtype), None, None), bad
        return self.weighting.solve(objectives.cpu()), bad

    def _inner_step(
        self, G: torch.Tensor, result: WeightingResult, bad: torch.Tensor, norm: torch.Tensor
    ) -> StepInfo:
        """Step the inner optimizer. A skip goes in undecided, as ``found_inf``, to an optimizer that
        takes it (fused Adam/AdamW/SGD) unless ``nonfinite="raise"`` needs the flag on the host."""
        takes_found_inf = amp.takes_found_inf(self.inner)
        decided = self._on_host(G) or self.nonfinite == "raise" or not takes_found_inf
        if decided and bad.item():
            return self._skip(G, result)
        with record_function("mogd.inner_step"):
            amp.step_unless(self.inner, None if decided else bad)
        weights = result.weights
        if decided:
            self._steps = int(self._steps) + 1
            self._last_weights = weights.detach().clone()
        else:
            self._steps = self._steps + (~bad).to(torch.int64)
            last = self._last_weights
            last = torch.full_like(weights, math.nan) if last is None else last.to(weights)
            self._last_weights = torch.where(bad, last, weights)
        return self._finish(G, result, bad if not decided else False, norm)

    def _on_host(self, G: torch.Tensor) -> bool:
        if self.weights_on == "auto":
            return G.device.type != "cuda"
        return self.weights_on == "host"

    def _ensure_topology(self) -> distributed.Topology:
        if self._topology is None:
            # Wrapped after MOGD was built (accelerate.prepare): look again, once.
            found = distributed.detect(self.trainable_params(), self.process_group)
            found = distributed.local_fallback() if found is None else found
            found.adopt(full_mode=self._probe is None)
            self._topology = found
        return self._topology

    def _set_k(self, k: int) -> None:
        self._k = k
        if self._bank is not None and self._bank.k is None:
            self._bank.fix_k(k)

    def _full_bank(self) -> GradientBank:
        self._bank = self._collector.bank_for(
            self.trainable_params(), self._ensure_topology().group_key, self._k
        )
        return self._bank

    def _probe_bank(self) -> GradientBank:
        if self._bank is None:
            assert self._probe is not None
            self._bank = GradientBank(
                self._probe.params, self._ensure_topology().group_key, self._k
            )
        return self._bank

    def _reset_cycle(self) -> None:
        if self._bank is not None:
            self._bank.reset()
        self._collector.reset()
        self._scaler_guard.reset()
        self._probed = None
        self._regularizer_passed = False

    def _finish(
        self, G: torch.Tensor, result: WeightingResult, skipped: Any, norm: torch.Tensor | float
    ) -> StepInfo:
        self._reset_cycle()
        info = StepInfo(result.weights, result.alpha, G, result.kkt_residual, skipped, norm)
        self.last_info = info
        return info

    def _skip(self, G: torch.Tensor, result: WeightingResult) -> StepInfo:
        """A skip decided on the host: no inner step, ``.grad`` cleared, warn or raise."""
        for p in self.trainable_params():
            p.grad = None
        info = self._finish(G, result, True, math.nan)
        scaler_inf = getattr(self, "found_inf", None)
        if scaler_inf is not None and float(scaler_inf) > 0:
            return info  # the GradScaler's own skip: it backs off and tells the caller
        message = skip_message(G, int(self._steps), result.weights.shape[0])
        if self.nonfinite == "raise":
            raise FloatingPointError(message)
        warnings.warn(
            message + "; the step was skipped (parameters and optimizer state unchanged)",
            RuntimeWarning,
            stacklevel=4,
        )
        return info
