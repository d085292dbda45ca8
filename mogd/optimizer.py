"""MOGD: a torch.optim.Optimizer that turns k objectives into one Pareto descent direction.

One step (DESIGN §1, Li et al. 2025 §3):

1. the per-objective gradients g_1..g_k land in a flat gradient bank (:mod:`mogd.bank`), one backward
   pass per objective (``opt.step(losses)`` or ``with opt.objective(i): loss_i.backward()``);
2. their Gram G_ij = ⟨g_i, g_j⟩ in one fused pass (:func:`mogd.gram`);
3. the weighting maps G to weights w on the raw gradients (GAPO Eq. 6–7, P-GAPO Eq. 8, MGDA);
4. d = Σ_i w_i g_i in one fused pass (:func:`mogd.combine`) into the ``.grad`` the inner optimizer
   reads, and ``inner.step()``.

Probe mode (paper App. B) computes the per-objective gradients of a small probe only (e.g. the LM head),
takes the weights from their Gram and runs ONE backward of Σ_i w_i L_i through the whole model.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.optim import Optimizer

from mogd import distributed
from mogd.bank import GradientBank, register_hooks
from mogd.ops import combine, gram
from mogd.weighting import GAPO, Weighting

__all__ = ["MOGD", "StepInfo"]


@dataclass(frozen=True, eq=False)
class StepInfo:
    """What one :meth:`MOGD.step` computed, as plain CPU tensors and floats (identical on every rank).

    Attributes:
        weights: float64 [k], d = Σ_i weights_i g_i (NaN when the step was skipped).
        alpha: float64 [k], the simplex point of the min-norm QP (None without a QP, e.g. P-GAPO).
        norms: float64 [k], n_i = ‖g_i‖.
        gram: float64 [k, k], G_ij = ⟨g_i, g_j⟩ (of the probe's gradients in probe mode).
        cosine: float64 [k, k], G_ij / (n_i n_j) (0 where a norm is 0).
        kkt_residual: the QP's KKT residual (None without a QP or when skipped).
        skipped: True when non-finite gradients made the step a no-op.
    """

    weights: torch.Tensor
    alpha: torch.Tensor | None
    norms: torch.Tensor
    gram: torch.Tensor
    cosine: torch.Tensor
    kkt_residual: float | None
    skipped: bool

    def as_dict(self, names: Sequence[str] | None = None, prefix: str = "") -> dict[str, float]:
        """Flat floats for a logger: ``weight/<name>``, ``norm/<name>``, ``alpha/<name>``,
        ``cosine/<a>/<b>`` (a before b), ``kkt_residual`` and ``skipped`` (0.0 or 1.0)."""
        k = self.weights.numel()
        labels = [str(i) for i in range(k)] if names is None else [str(n) for n in names]
        if len(labels) != k:
            raise ValueError(f"names has {len(labels)} entries but there are k = {k} objectives")
        out: dict[str, float] = {}
        for i, name in enumerate(labels):
            out[f"{prefix}weight/{name}"] = float(self.weights[i])
            out[f"{prefix}norm/{name}"] = float(self.norms[i])
            if self.alpha is not None:
                out[f"{prefix}alpha/{name}"] = float(self.alpha[i])
        for i in range(k):
            for j in range(i + 1, k):
                out[f"{prefix}cosine/{labels[i]}/{labels[j]}"] = float(self.cosine[i, j])
        if self.kkt_residual is not None:
            out[f"{prefix}kkt_residual"] = float(self.kkt_residual)
        out[f"{prefix}skipped"] = float(self.skipped)
        return out


class MOGD(Optimizer):
    """Multi-objective gradient descent around any ``torch.optim`` optimizer.

    ``MOGD(inner, weighting)`` turns k losses into the direction d = Σ_i w_i g_i with w = weighting(G),
    G the Gram matrix of the per-objective gradients g_i (GAPO: Li et al., ACL 2025, arXiv 2507.01915,
    Eq. 6–8), and lets ``inner`` take its step along d. It shares ``param_groups``, ``state`` and
    ``defaults`` with ``inner``, so LR schedulers, ``zero_grad``, ``state_dict``, ``GradScaler`` and
    ``accelerate`` work on it as on any optimizer.

    Args:
        inner: the optimizer that applies d (AdamW, SGD, ...).
        weighting: the map G ↦ w: :class:`mogd.GAPO` (default ``GAPO(p=1)``), ``PGAPO``, ``MGDA``,
            ``Linear``.
        probe: a module or parameters: per-objective gradients of these only, then one backward of
            Σ_i w_i L_i through everything (paper App. B). Needs ``step(losses)``.
        nonfinite: "skip" (default: warn, leave parameters and optimizer state untouched) or "raise"
            (``FloatingPointError``) when an objective's gradient holds NaN/Inf.
        process_group: average the per-objective gradients over this group (data parallelism
            without DDP). DDP-wrapped models and DTensor (FSDP2) parameters are detected.

    Usage::

        opt = mogd.MOGD(torch.optim.AdamW(model.parameters(), lr=1e-5), mogd.GAPO(p=1))
        opt.zero_grad()
        info = opt.step([loss_a, loss_b])      # or: with opt.objective(i): loss_i.backward(); opt.step()
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
        nonfinite: Literal["skip", "raise"] = "skip",
        process_group: Any = None,
    ) -> None:
        if isinstance(inner, MOGD):
            raise TypeError("inner is already a MOGD; wrap the base optimizer (e.g. AdamW) once")
        if not isinstance(inner, Optimizer):
            raise TypeError(
                f"inner must be a torch.optim.Optimizer (e.g. torch.optim.AdamW(params)), "
                f"got {type(inner).__name__}"
            )
        if weighting is None:
            weighting = GAPO(p=1.0)
        if not isinstance(weighting, Weighting):
            raise TypeError(
                "weighting must be a mogd weighting (mogd.GAPO(p=1), mogd.PGAPO([...]), "
                f"mogd.MGDA(), mogd.Linear([...])), got {type(weighting).__name__}"
            )
        if nonfinite not in ("skip", "raise"):
            raise ValueError(f"nonfinite must be 'skip' or 'raise', got {nonfinite!r}")
        self.inner = inner
        self.weighting = weighting
        self.nonfinite = nonfinite
        self.process_group = process_group
        # What Optimizer.__init__ sets up, minus the parameter groups, which belong to ``inner``.
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()
        self._warned_capturable_if_run_uncaptured = True

        self._k: int | None = None
        self._steps = 0
        self._last_weights: torch.Tensor | None = None
        # The StepInfo of the last step, for wrappers that drop step()'s return value (accelerate).
        self.last_info: StepInfo | None = None
        self._active: int | None = None
        self._bank: GradientBank | None = None
        self._bank_signature: tuple = ()
        self._hooks: list[Any] = []
        self._reached: list[bool] = []
        # GradScaler guard: None until the first step tells whether a scaler drives this optimizer.
        self._amp: bool | None = None
        self._inf_flag: torch.Tensor | None = None

        self._probe: list[torch.Tensor] | None = None
        if probe is not None:
            self._probe = self._resolve_probe(probe)
        self._topology: distributed.Topology | None = distributed.detect(
            self._trainable(), process_group
        )
        if self._topology is not None:
            self._adopt_topology(self._topology)

    # -- the torch.optim.Optimizer protocol: shared with ``inner`` --------------------------------

    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.inner.param_groups = value

    @property  # type: ignore[override]
    def state(self) -> Any:
        return self.inner.state

    @state.setter
    def state(self, value: Any) -> None:
        self.inner.state = value

    @property  # type: ignore[override]
    def defaults(self) -> dict[str, Any]:
        return self.inner.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.inner.defaults = value

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

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict plus MOGD's own under ``"mogd"``: the step count, the
        last weights and the configuration (k, weighting, nonfinite policy, probe)."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        sd = self.inner.state_dict()
        sd["mogd"] = {
            "step": self._steps,
            "k": self._k,
            "weights": None if self._last_weights is None else self._last_weights.tolist(),
            "weighting": repr(self.weighting),
            "nonfinite": self.nonfinite,
            "probe": self._probe is not None,
        }
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, sd)
            if result is not None:
                sd = result
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (a plain inner-optimizer state dict is accepted too)."""
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        sd = dict(state_dict)
        mine = sd.pop("mogd", None)
        if mine is not None:
            k = mine.get("k")
            if k is not None and self._k is not None and k != self._k:
                raise ValueError(
                    f"state_dict is for k = {k} objectives but this optimizer steps k = {self._k}"
                )
            if mine.get("weighting") != repr(self.weighting):
                warnings.warn(
                    f"loading MOGD state saved with weighting {mine.get('weighting')} into one "
                    f"using {self.weighting!r}; the new weighting is used from now on",
                    stacklevel=2,
                )
        self.inner.load_state_dict(sd)
        if mine is not None:
            self._steps = int(mine.get("step", 0))
            weights = mine.get("weights")
            self._last_weights = (
                None if weights is None else torch.tensor(weights, dtype=torch.float64)
            )
            if mine.get("k") is not None and self._k is None:
                self._set_k(int(mine["k"]))
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def __repr__(self) -> str:
        mode = "full" if self._probe is None else f"probe({len(self._probe)} tensors)"
        topology = "pending" if self._topology is None else self._topology.describe()
        inner = "\n".join("    " + line for line in repr(self.inner).splitlines())
        return (
            f"MOGD(\n  weighting: {self.weighting!r}\n  objectives: {self._k or 'from first step'}"
            f"\n  mode: {mode}\n  nonfinite: {self.nonfinite!r}\n  distributed: {topology}"
            f"\n  steps: {self._steps}\n  inner:\n{inner}\n)"
        )

    # -- per-objective backward passes -------------------------------------------------------------

    @contextmanager
    def objective(self, i: int) -> Iterator[None]:
        """Backward passes inside this context land in objective i's gradient.

        Calling it again for the same i before :meth:`step` accumulates (micro-batches). Objectives
        are numbered 0..k-1; k is fixed by the first step.
        """
        if self._probe is not None:
            raise ValueError(
                "probe mode computes the per-objective gradients itself: call "
                "opt.step([loss_0, ..., loss_k-1]) instead of opt.objective(i)"
            )
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"objective index must be an int in 0..k-1, got {i!r}")
        if i < 0 or (self._k is not None and i >= self._k):
            bound = f"0..{self._k - 1}" if self._k is not None else "0, 1, ..."
            raise ValueError(f"objective index {i} is out of range: objectives are {bound}")
        if self._active is not None:
            raise RuntimeError(f"objective({i}) entered inside objective({self._active})")
        bank = self._full_bank()
        with torch.no_grad():
            bank.ensure_row(i)
        bank.point_grads(i)
        self._active = i
        try:
            yield
        finally:
            self._active = None
            bank.adopt_foreign_grads(i)
            if self._amp is not False:
                self._guard_for_scaler(bank, i)

    def _on_grad(self, j: int) -> None:
        if self._active is None:
            if self._bank is None or not self._bank.live:
                return  # nothing pending: not ours to guard (e.g. another optimizer's backward)
            raise RuntimeError(
                "a backward pass reached the parameters of a MOGD optimizer outside "
                "opt.objective(i) while per-objective gradients were pending: wrap each objective's backward in `with opt.objective(i):` or "
                "pass the losses to opt.step([loss_0, ...])"
            )
        self._reached[j] = True

    def _on_incoming(self, grad: torch.Tensor) -> None:
        if grad.is_sparse or grad.layout != torch.strided:
            raise TypeError(
                "a parameter received a sparse gradient; MOGD keeps dense per-objective gradients "
                "(use nn.Embedding(sparse=False))"
            )

    def _guard_for_scaler(self, bank: GradientBank, i: int) -> None:
        """Make one non-finite row visible to a GradScaler's inf check.

        The scaler inspects ``p.grad``, i.e. only the row of the last objective. A running max|g| over
        every row is folded into one element of the visible row as ``x · (1 + 0·flag)``: exactly x
        while everything is finite, NaN otherwise, so the scaler skips and backs off as it would.
        In distributed runs the flag is first summed across ranks so every scaler agrees.
        """
        rows = [r for r in bank.row_tensors(i) if r.numel()]
        if not rows:
            return
        with torch.no_grad():
            flag = sum(
                torch.linalg.vector_norm(r, math.inf).to(rows[0].device, torch.float32)
                for r in rows
            )
            assert isinstance(flag, torch.Tensor)
            distributed.sum_over_groups_(flag, self._collective_groups())
            self._inf_flag = flag if self._inf_flag is None else self._inf_flag + flag
            for r in rows:
                r[:1].mul_(1 + 0 * self._inf_flag.to(r.device))

    # -- the step ----------------------------------------------------------------------------------

    def step(self, losses: Sequence[torch.Tensor] | None = None) -> StepInfo:  # type: ignore[override]
        """One multi-objective step; returns a :class:`StepInfo`.

        Args:
            losses: the k scalar losses (one shared graph or several). When None, the gradients of
                the ``opt.objective(i)`` backward passes since the last step are used.
        """
        if callable(losses) and not isinstance(losses, torch.Tensor):
            raise TypeError(
                "MOGD.step takes the k losses (or nothing after opt.objective(i) backward passes), "
                "not a closure"
            )
        try:
            return self._step(losses)
        except BaseException:
            # GradScaler deletes the attributes it set only when step() returns; a raising step
            # must not leave them behind for the next scaler.step().
            for name in ("grad_scale", "found_inf"):
                if name in self.__dict__:
                    delattr(self, name)
            raise

    def _step(self, losses: Sequence[torch.Tensor] | None) -> StepInfo:
        scale, scaler_found_inf = self._scaler_state(losses)
        if self._probe is not None:
            return self._probe_step(losses)
        if losses is not None:
            checked = self._check_losses(losses)
            if self._bank is not None and self._bank.live:
                raise ValueError(
                    "step(losses) after opt.objective(i) backward passes: use one or the other "
                    "per step (or call zero_grad() first)"
                )
            if self._k is None:
                self._set_k(len(checked))
            for i, loss in enumerate(checked):
                with self.objective(i):
                    loss.backward(retain_graph=i < len(checked) - 1)
        bank = self._full_bank()
        self._close_objectives(bank)
        topology = self._topology
        assert topology is not None
        if topology.kind == "replicated":
            distributed.all_reduce_sum_(bank.all_tensors(), topology.group)
        G = self._global_gram(bank.matrices(), bank)
        divisor = (1.0 if scale is None else scale) * topology.world_size
        G = G / divisor**2
        bad = _nonfinite_objectives(G)
        if scaler_found_inf or bad:
            return self._skip(G, bad, by_scaler=scaler_found_inf, bank=bank)
        result = self.weighting.solve(G)
        weights = result.weights
        with torch.no_grad():
            for matrix, row0 in zip(bank.matrices(), bank.row_tensors(0), strict=True):
                out = row0 if isinstance(matrix, torch.Tensor) else [row0]
                combine(matrix, weights / divisor, out=out)
        bank.point_grads(0, only=self._reached)
        self.inner.step()
        return self._finish(G, weights, result.alpha, result.kkt_residual, skipped=False)

    def _probe_step(self, losses: Sequence[torch.Tensor] | None) -> StepInfo:
        if losses is None:
            raise ValueError(
                "probe mode needs the losses: opt.step([loss_0, ..., loss_k-1]) (each objective's "
                "gradient is taken on the probe, then one backward of Σ w_i L_i runs)"
            )
        checked = self._check_losses(losses)
        if self._k is None:
            self._set_k(len(checked))
        assert self._probe is not None
        bank = self._probe_bank()
        k = len(checked)
        with torch.no_grad():
            for i in range(k):
                bank.ensure_row(i)
        for i, loss in enumerate(checked):
            # autograd.grad, not backward(inputs=probe): it leaves .grad alone and does not fire DDP's
            # reducer hooks, so the one weighted backward below is an ordinary DDP backward.
            grads = torch.autograd.grad(loss, self._probe, retain_graph=True, allow_unused=True)
            with torch.no_grad():
                for view, g in zip(bank.grads(i), grads, strict=True):
                    if g is not None:
                        _local_of(view).copy_(_local_of(g))
        topology = self._topology
        assert topology is not None
        if topology.kind == "replicated":
            distributed.all_reduce_sum_(bank.all_tensors(), topology.group)
        G = self._global_gram(bank.matrices(), bank) / float(topology.world_size) ** 2
        bad = _nonfinite_objectives(G)
        if bad:
            bank.reset()
            return self._skip(G, bad, by_scaler=False, bank=None)
        result = self.weighting.solve(G)
        weights = result.weights
        # zero weights are left out rather than multiplied: 0 · (an Inf outside the probe) is NaN
        pairs = [(w, loss) for w, loss in zip(weights.tolist(), checked, strict=True) if w]
        if pairs:
            with torch.enable_grad():
                total = pairs[0][0] * pairs[0][1]
                for w, loss in pairs[1:]:
                    total = total + w * loss
            total.backward()
        bank.reset()
        trainable = self._trainable()
        combined = [p.grad for p in trainable if p.grad is not None]
        if topology.kind == "replicated" and not topology.ddp and combined:
            distributed.all_reduce_grads_(combined, topology.group, topology.world_size)
        if combined and not bool(
            torch.isfinite(torch.nn.utils.get_total_norm(combined, norm_type=math.inf))
        ):
            for p in trainable:
                p.grad = None
            return self._skip(G, [], by_scaler=False, bank=None, combined=True)
        self.inner.step()
        return self._finish(G, weights, result.alpha, result.kkt_residual, skipped=False)

    # -- helpers -----------------------------------------------------------------------------------

    def _scaler_state(self, losses: Any) -> tuple[float | None, bool]:
        """(scale, found_inf) when a GradScaler calls step(), else (None, False)."""
        found_inf = getattr(self, "found_inf", None)
        if found_inf is None:
            if self._amp is None:
                # no scaler at the first step: stop guarding objective exits for one (a scaler
                # brought in later is guarded from its second step on)
                self._amp = False
            return None, False
        self._amp = True
        scale = getattr(self, "grad_scale", None)
        if scale is None:
            raise RuntimeError(
                "scaler.unscale_(optimizer) was called before scaler.step(optimizer); MOGD keeps one "
                "gradient per objective and unscales them all inside step(): drop the unscale_ call"
            )
        if losses is not None or self._probe is not None:
            raise RuntimeError(
                "with a GradScaler, backpropagate each objective as "
                "`with opt.objective(i): scaler.scale(loss_i).backward()` and then call "
                "scaler.step(opt) without losses (probe mode does not support GradScaler)"
            )
        found = float(found_inf) if not isinstance(found_inf, torch.Tensor) else found_inf.item()
        return float(scale), found > 0

    def _check_losses(self, losses: Any) -> list[torch.Tensor]:
        if isinstance(losses, torch.Tensor) or not isinstance(losses, Sequence):
            raise TypeError(
                "losses must be a list or tuple of k scalar tensors, e.g. opt.step([loss_a, "
                f"loss_b]); got {type(losses).__name__} (for one objective pass [loss])"
            )
        if len(losses) == 0:
            raise ValueError("losses is empty; pass one scalar loss per objective")
        if self._k is not None and len(losses) != self._k:
            raise ValueError(
                f"got {len(losses)} losses but earlier steps had k = {self._k} objectives; "
                "pass the same objectives every step"
            )
        for i, loss in enumerate(losses):
            if not isinstance(loss, torch.Tensor):
                raise TypeError(f"losses[{i}] must be a tensor, got {type(loss).__name__}")
            if loss.numel() != 1:
                raise ValueError(
                    f"losses[{i}] has shape {tuple(loss.shape)}; each loss must be a scalar "
                    "(reduce it with .mean() or .sum())"
                )
            if not loss.requires_grad:
                raise ValueError(
                    f"losses[{i}] does not require grad: it is not connected to any trainable "
                    "parameter (computed under torch.no_grad() or from detached tensors?)"
                )
        return list(losses)

    def _trainable(self) -> list[torch.Tensor]:
        seen: set[int] = set()
        out = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def _resolve_probe(self, probe: Any) -> list[torch.Tensor]:
        params: list[torch.Tensor]
        if isinstance(probe, torch.nn.Module):
            params = [p for p in probe.parameters() if p.requires_grad]
        elif isinstance(probe, torch.Tensor):
            params = [probe]
        else:
            try:
                params = list(probe)
            except TypeError as err:
                raise TypeError(
                    "probe must be a module (e.g. model.lm_head) or an iterable of parameters"
                ) from err
            if not all(isinstance(p, torch.Tensor) for p in params):
                raise TypeError("probe must be a module or an iterable of parameters (tensors)")
        if not params:
            raise ValueError("probe has no trainable parameters; pass e.g. probe=model.lm_head")
        ids = {id(p) for p in self._trainable()}
        if any(id(p) not in ids for p in params):
            raise ValueError(
                "probe parameters must be trainable parameters of the inner optimizer "
                "(pass the same model's module, e.g. probe=model.lm_head)"
            )
        if any(distributed.is_sharded(p) for p in params):
            raise ValueError(
                "probe mode with sharded (DTensor/FSDP2) parameters is not supported: FSDP2 runs the "
                "forward on unsharded copies; use the full mode"
            )
        unique: dict[int, torch.Tensor] = {}
        for p in params:
            unique.setdefault(id(p), p)
        return list(unique.values())

    def _adopt_topology(self, topology: distributed.Topology) -> None:
        self._topology = topology
        if topology.kind == "replicated" and self._probe is None:
            distributed.take_over_ddp(topology)

    def _ensure_topology(self) -> distributed.Topology:
        if self._topology is None:
            # Wrapped after MOGD was built (accelerate.prepare): look again, once.
            found = distributed.detect(self._trainable(), self.process_group)
            if found is None:
                import torch.distributed as dist

                found = distributed.local_fallback(dist.get_world_size())
            self._adopt_topology(found)
        assert self._topology is not None
        return self._topology

    def _collective_groups(self) -> list[Any]:
        topology = self._ensure_topology()
        if topology.kind == "replicated":
            return [topology.group]
        if topology.kind == "sharded" and self._bank is not None:
            groups: list[Any] = []
            for g in self._bank.groups:
                groups.extend(x for x in g.reduce_groups if all(x is not y for y in groups))
            return groups
        return []

    def _set_k(self, k: int) -> None:
        self._k = k
        if self._bank is not None and self._bank.k is None:
            self._bank.fix_k(k)

    def _full_bank(self) -> GradientBank:
        """The bank over all trainable parameters, rebuilt when they changed between steps."""
        if self._bank is not None and self._bank.live:
            return self._bank  # mid-accumulation: the parameter set cannot change now
        topology = self._ensure_topology()
        params = self._trainable()
        signature = tuple(id(p) for p in params)
        if self._bank is None or (signature != self._bank_signature and not self._bank.live):
            for handle in self._hooks:
                handle.remove()
            self._bank = None  # free the old buffers before allocating new ones
            group_key = distributed.shard_groups if topology.kind == "sharded" else _no_groups
            self._bank = GradientBank(params, group_key, self._k)
            self._bank_signature = signature
            self._hooks = register_hooks(self._bank, self._on_grad, self._on_incoming)
            self._reached = [False] * len(params)
        return self._bank

    def _probe_bank(self) -> GradientBank:
        topology = self._ensure_topology()
        if self._bank is None:
            group_key = distributed.shard_groups if topology.kind == "sharded" else _no_groups
            assert self._probe is not None
            self._bank = GradientBank(self._probe, group_key, self._k)
        return self._bank

    def _close_objectives(self, bank: GradientBank) -> int:
        """Check that every objective 0..k-1 was backpropagated since the last step; fix k."""
        if not bank.live:
            raise ValueError(
                "step() found no per-objective gradients: pass the losses, opt.step([loss_0, ...]), "
                "or backpropagate each inside `with opt.objective(i):` first"
            )
        k = self._k if self._k is not None else max(bank.live) + 1
        missing = [i for i in range(k) if i not in bank.live]
        if missing:
            raise ValueError(
                f"objective {missing[0]} was never backpropagated since the last step "
                f"(k = {k}); run `with opt.objective({missing[0]}): loss.backward()` first"
            )
        if self._k is None:
            self._set_k(k)
        return k

    def _global_gram(self, matrices: list[Any], bank: GradientBank) -> torch.Tensor:
        """G summed over buffers, and over the shards of sharded buffers (one k×k all-reduce)."""
        by_groups: dict[tuple, torch.Tensor] = {}
        for matrix, group in zip(matrices, bank.groups, strict=True):
            G = gram(matrix)
            key = group.reduce_groups
            by_groups[key] = G if key not in by_groups else by_groups[key] + G.to(by_groups[key])
        total = torch.zeros(self._k or 1, self._k or 1, dtype=torch.float64)
        for key, G in by_groups.items():
            distributed.sum_over_groups_(G, key)
            total += G.cpu()
        return total

    def _reset_cycle(self) -> None:
        if self._bank is not None:
            self._bank.reset()
        self._reached = [False] * len(self._reached)
        self._inf_flag = None

    def _finish(
        self,
        G: torch.Tensor,
        weights: torch.Tensor,
        alpha: torch.Tensor | None,
        kkt: float | None,
        skipped: bool,
    ) -> StepInfo:
        self._reset_cycle()
        if not skipped:
            self._steps += 1
            self._last_weights = weights.clone()
        norms = G.diagonal().clamp(min=0).sqrt()
        outer = norms[:, None] * norms[None, :]
        cosine = torch.where(outer > 0, G / torch.where(outer > 0, outer, 1.0), 0.0)
        self.last_info = StepInfo(weights, alpha, norms, G, cosine, kkt, skipped)
        return self.last_info

    def _skip(
        self,
        G: torch.Tensor,
        bad: list[int],
        by_scaler: bool,
        bank: GradientBank | None,
        combined: bool = False,
    ) -> StepInfo:
        if bank is not None:
            for p in bank.params:
                p.grad = None
        k = G.shape[0]
        info = self._finish(G, torch.full((k,), math.nan, dtype=torch.float64), None, None, True)
        if not by_scaler:
            where = (
                "the combined gradient Σ w_i g_i"
                if combined
                else "objective(s) " + ", ".join(str(i) for i in bad)
            )
            message = f"non-finite gradient (NaN/Inf) in {where} at MOGD step {self._steps}"
            if self.nonfinite == "raise":
                raise FloatingPointError(message)
            warnings.warn(
                message + "; the step was skipped (parameters and optimizer state unchanged)",
                RuntimeWarning,
                stacklevel=3,
            )
        return info


def _no_groups(_: torch.Tensor) -> tuple:
    return ()


def _local_of(t: torch.Tensor) -> torch.Tensor:
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def _nonfinite_objectives(G: torch.Tensor) -> list[int]:
    """Objectives whose gradient holds NaN/Inf, read off the Gram (G_ii is then non-finite)."""
    finite = torch.isfinite(G)
    if bool(finite.all()):
        return []
    diag = [i for i in range(G.shape[0]) if not bool(finite[i, i])]
    return diag or [i for i in range(G.shape[0]) if not bool(finite[i].all())]
