"""GAPO inside TRL: :class:`MOGDGRPOTrainer`, GRPO with one objective per reward function.

TRL's ``GRPOTrainer`` collapses its reward functions into one scalar (a weighted sum, then group
normalisation) and takes one policy-gradient step on it. This trainer keeps the k rewards apart:

1. **Advantages per reward.** Reward j is group-normalised on its own, with TRL's ``scale_rewards``
   ("group", "batch" or "none") and TRL's 1e-4 in the denominator: A_j = (r_j - mean_group(r_j)) /
   (std(r_j) + 1e-4) (:func:`group_advantages`).
2. **One GRPO loss per reward.** L_j is TRL's own loss with A_j in place of the scalar advantage: the
   same ``loss_type``, clipping, KL term, masks and importance sampling (TRL's ``_compute_loss``
   runs once per objective on one shared forward pass).
3. **Pareto direction.** Each L_j is backpropagated into its own gradient row of :class:`mogd.MOGD`
   (``with opt.objective(j)``), which wraps the optimizer TRL built; at the optimizer step MOGD forms
   the Gram of the k gradients, the weighting's w (GAPO Eq. 6–7, P-GAPO Eq. 8, MGDA, Linear; Li et
   al., ACL 2025, arXiv 2507.01915), the direction d = Σ_j w_j g_j clipped to ``max_grad_norm``, and
   the inner step. Gradient accumulation, the LR scheduler and checkpoints work as in TRL. With
   ``probe=`` (paper App. B) the weights come from the probe's k gradients and one backward of
   Σ_j w_j L_j runs instead (``opt.backward``).

GRPO + GAPO is an extension: the paper applies GAPO to PPO with a learned critic. Here the per-reward
policy gradients are GRPO's (critic-free, group baselines); the weighting math is the paper's.

Engines: one process, and DDP or FSDP2 through ``accelerate launch`` (MOGD detects the DDP module or
the DTensor parameters; the Gram is global and exact). Generation, vLLM included, is TRL's and needs
nothing from here. DeepSpeed owns the optimizer step and is refused.
"""

from __future__ import annotations

if __name__ == "trl":  # pragma: no cover - only when integrations/ itself is on sys.path
    raise ImportError(
        "integrations/trl.py was imported as the top-level module `trl`, shadowing the TRL library: "
        "do not put the integrations/ folder on sys.path; import it as `integrations.trl` or "
        "`mogd.integrations.trl`"
    )

import contextlib
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
import transformers
import trl
from trl.trainer.utils import nanstd

import mogd

from .common import find_module

__all__ = ["MOGDGRPOTrainer", "group_advantages"]

# TRL's denominator guard in the group normalisation of GRPOTrainer (kept identical per reward).
STD_EPS = 1e-4

# What TRL's adaptive entropy controller keeps between micro-batches. The k per-objective losses of
# one micro-batch must see (and advance) it once, as TRL's single loss does.
_ENTROPY_CONTROLLER = ("entropy_coef", "_last_world_entropy", "_entropy_window_stats")
_MISSING = object()


def group_advantages(
    rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group"
) -> torch.Tensor:
    """Per-reward GRPO advantages, each reward column normalised on its own.

    For rewards ``[N, k]`` (N = groups × ``num_generations``, rows of one group adjacent, NaN where a
    reward function returned None) and every column j:
    A_j = r_j - mean_group(r_j), divided by std_group(r_j) + 1e-4 (``"group"``), by the batch std of
    r_j + 1e-4 (``"batch"``) or not at all (``"none"``): TRL's ``scale_rewards`` applied per stream.
    Means and stds skip NaNs; a NaN reward gets advantage 0.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [N, k], got shape {tuple(rewards.shape)}")
    if num_generations < 1 or rewards.shape[0] % num_generations:
        raise ValueError(
            f"num_generations ({num_generations}) must divide the number of rows ({rewards.shape[0]})"
        )
    grouped = rewards.view(-1, num_generations, rewards.shape[1])
    centered = grouped - torch.nanmean(grouped, dim=1, keepdim=True)
    if scale_rewards == "group":
        std = (
            nanstd(grouped, dim=1, keepdim=True)
            if num_generations > 1
            else torch.zeros_like(grouped[:, :1])
        )
        centered = centered / (std + STD_EPS)
    elif scale_rewards == "batch":
        std = nanstd(rewards, dim=0) if rewards.shape[0] > 1 else torch.zeros_like(rewards[0])
        centered = centered / (std + STD_EPS)
    elif scale_rewards != "none":
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    return torch.nan_to_num(centered.reshape(rewards.shape), nan=0.0)


class MOGDGRPOTrainer(trl.GRPOTrainer):
    """``trl.GRPOTrainer`` with GAPO (or P-GAPO, MGDA, Linear) across its reward functions.

    Takes every argument of ``trl.GRPOTrainer``, plus:

    Args:
        weighting: the map Gram ↦ weights, default ``mogd.GAPO(p=1)``. Pass the class ``mogd.PGAPO``
            or ``mogd.Linear`` to build it from ``args.reward_weights`` (the P-GAPO preference λ, or
            the linear weights c); an instance must agree with ``reward_weights`` if both are given.
        probe: the paper's memory saver (App. B): the weights come from the per-objective
            gradients of this module only (a module of the model, or its name, e.g. ``"lm_head"``),
            then ONE backward of Σ_j w_j L_j runs through the whole model. Each micro-batch is
            weighted by its own probe Gram; the logs show the last one's. Default: full mode, k
            backward passes into k full gradients.
        max_norm: clip the combined direction d to this global L2 norm (all ranks); default
            ``args.max_grad_norm``, and 0 or None switches clipping off. TRL's own clipping is off:
            it would clip one objective's gradient, not d.

    Each reward function is one objective, in ``reward_funcs`` order. The logs add, per step,
    ``mogd/weight/<reward>``, ``mogd/norm/<reward>`` (gradient norms), ``mogd/cosine/<a>/<b>``,
    ``mogd/direction_norm`` (‖d‖ before clipping) to TRL's ``rewards/<reward>/mean|std``; the
    ``loss`` is the mean of the per-objective GRPO losses. ``args.multi_objective_aggregation``
    does not apply (the weighting replaces the sum).
    """

    def __init__(
        self,
        *args: Any,
        weighting: mogd.Weighting | type[mogd.PGAPO] | type[mogd.Linear] | None = None,
        probe: str | torch.nn.Module | None = None,
        max_norm: float | None = None,
        **kwargs: Any,
    ) -> None:
        if probe is not None and not isinstance(probe, (str, torch.nn.Module)):
            raise TypeError(
                f"probe must be a module of the model or its name (e.g. 'lm_head'), got {probe!r}"
            )
        for name in ("_clip_grad_norm", "_get_grad_norm"):
            if not callable(getattr(transformers.Trainer, name, None)):
                raise ImportError(
                    f"transformers {transformers.__version__} has no Trainer.{name}, which "
                    "MOGDGRPOTrainer overrides to move gradient clipping onto the combined "
                    "direction; install the versions of the mogd[trl] extra"
                )
        super().__init__(*args, **kwargs)
        if self.is_deepspeed_enabled:
            raise ValueError(
                "MOGDGRPOTrainer does not run under DeepSpeed: ZeRO owns the gradients and the "
                "optimizer step, so no per-objective gradient reaches MOGD. Shard with FSDP2 instead "
                "(accelerate config: fsdp_version: 2), which MOGD supports exactly"
            )
        if probe is not None and self.is_fsdp_enabled:
            raise ValueError(
                "probe= under FSDP through accelerate: accelerate replaces the parameters after the "
                "optimizer is built, so the probe's would be stale; train in full mode (probe=None)"
            )
        self.objective_names = _unique(self.reward_func_names)
        self.probe = probe
        self.weighting = self._resolve_weighting(weighting)
        if max_norm is None:
            max_norm = self.args.max_grad_norm
        if max_norm is not None and (not math.isfinite(max_norm) or max_norm < 0):
            raise ValueError(
                f"max_norm must be a finite number >= 0 (0 = no clipping), got {max_norm}"
            )
        self.max_norm = max_norm or None
        self.mogd_optimizer: mogd.MOGD | None = None
        self._rewards_per_objective: torch.Tensor | None = None
        self._last_objective: contextlib.ExitStack | None = None
        self._shared_forward: list[Any] | None = None
        self._step_logs: dict[str, list[float]] = defaultdict(list)
        self.add_callback(_LogMOGDStep(self))

    def _resolve_weighting(
        self, weighting: mogd.Weighting | type[mogd.PGAPO] | type[mogd.Linear] | None
    ) -> mogd.Weighting:
        k = len(self.objective_names)
        config = self.args
        assert isinstance(config, trl.GRPOConfig)
        given = config.reward_weights
        weights = [1.0] * k if given is None else [float(x) for x in given]
        if weighting is None:
            weighting = mogd.GAPO(p=1.0)
        if weighting in (mogd.PGAPO, mogd.Linear):
            try:
                return weighting(weights)  # type: ignore[operator]
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"reward_weights cannot be the {weighting.__name__} weights: {err}"
                ) from err  # type: ignore[union-attr]
        if not isinstance(weighting, mogd.Weighting):
            raise TypeError(
                "weighting must be a mogd weighting (mogd.GAPO(p=1), mogd.MGDA(), mogd.PGAPO([...]), "
                "mogd.Linear([...])) or the class mogd.PGAPO / mogd.Linear to take "
                f"args.reward_weights, got {weighting!r}"
            )
        own = {mogd.PGAPO: "preference", mogd.Linear: "weights"}.get(type(weighting))
        if own is not None:
            vector = torch.as_tensor(getattr(weighting, own), dtype=torch.float64)
            if vector.numel() != k:
                raise ValueError(
                    f"weighting {weighting!r} has {vector.numel()} entries but there are "
                    f"{k} reward functions (objectives)"
                )
            if given is not None:
                expected = torch.tensor(weights, dtype=torch.float64)
                if own == "preference":
                    expected = expected / expected.sum()
                if not torch.allclose(vector, expected):
                    raise ValueError(
                        f"args.reward_weights {weights} disagree with {weighting!r}; give one of them "
                        "(or pass the class, weighting=mogd.PGAPO / mogd.Linear)"
                    )
        elif given is not None and any(w != 1.0 for w in weights):
            raise ValueError(
                f"args.reward_weights {weights} have no meaning for {weighting!r}, which takes its "
                "weights from the gradients; drop reward_weights, or use them as a preference with "
                "weighting=mogd.PGAPO (or mogd.Linear for a fixed weighted sum)"
            )
        return weighting

    # -- the optimizer: MOGD around the one TRL built ---------------------------------------------

    def create_optimizer(self, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        inner = super().create_optimizer(*args, **kwargs)
        if isinstance(inner, mogd.MOGD):
            if inner is self.mogd_optimizer:
                return inner  # train() called again
            raise TypeError(
                "optimizers= holds a mogd.MOGD; pass the plain optimizer (e.g. AdamW): the trainer "
                "wraps it with its weighting= and max_norm="
            )
        probe = self.probe
        if isinstance(probe, str):
            model = args[0] if args else kwargs.get("model")
            model = self.model if model is None else model
            if model is None:
                raise ValueError(f"probe={probe!r} needs the model to look it up in")
            probe = find_module(model, probe, "probe=")
        self.mogd_optimizer = mogd.MOGD(inner, self.weighting, probe=probe, max_norm=self.max_norm)
        self.optimizer = self.mogd_optimizer
        return self.optimizer

    def _clip_grad_norm(self, model: torch.nn.Module) -> None:
        # Before MOGD.step a parameter's .grad is one objective's bank row (full mode) or an
        # unfinished combination (probe mode under a GradScaler): clipping it here would clip the
        # wrong vector. MOGD clips the direction d itself (max_norm).
        return None

    def _get_grad_norm(self, model: torch.nn.Module, grad_norm: Any = None) -> None:
        # Same reason; the norm of the step's direction is logged as mogd/direction_norm.
        return None

    # -- advantages per reward --------------------------------------------------------------------

    def _calculate_rewards(self, inputs: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        rewards = super()._calculate_rewards(inputs, *args, **kwargs)
        self._rewards_per_objective = rewards  # [all processes' completions, k]
        return rewards

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        rewards, self._rewards_per_objective = self._rewards_per_objective, None
        if rewards is None:
            raise RuntimeError(
                f"TRL {trl.__version__} scored completions without GRPOTrainer._calculate_rewards, "
                "so the per-reward scores never reached MOGDGRPOTrainer; use a TRL version of the "
                "mogd[trl] extra"
            )
        training = self.model is not None and self.model.training
        groups = self.num_generations if training else self.num_generations_eval
        assert groups is not None
        advantages = group_advantages(rewards, groups, self.scale_rewards)
        rank = self.accelerator.process_index
        output["objective_advantages"] = advantages[rank * len(inputs) : (rank + 1) * len(inputs)]
        return output

    # -- one GRPO loss and one backward pass per objective ----------------------------------------

    def training_step(
        self, model: torch.nn.Module, inputs: Any, num_items_in_batch: Any = None
    ) -> torch.Tensor:
        # compute_loss backpropagates objectives 0..k-2 itself and leaves objective k-1 open, so that
        # the Trainer's own backward (with its scaling and AMP handling) lands in the last row.
        with contextlib.ExitStack() as last_objective:
            self._last_objective = last_objective
            try:
                return super().training_step(model, inputs, num_items_in_batch)
            finally:
                self._last_objective = None

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor:
        if return_outputs or self._last_objective is None or not torch.is_grad_enabled():
            # evaluation: TRL's loss on its own scalarised advantages
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        opt = self.mogd_optimizer
        assert opt is not None, "training_step before create_optimizer"
        columns = inputs["objective_advantages"]
        advantages = [columns[:, j] for j in range(columns.shape[1])]
        losses = self._objective_losses(model, inputs, advantages, num_items_in_batch)
        mean = torch.stack([loss.detach() for loss in losses]).mean()
        if self.probe is not None:
            opt.backward(losses, scaler=self.accelerator.scaler)
            # the one weighted backward has run: the Trainer's backward of this leaf reaches no
            # parameter, and "loss" logs the mean over objectives
            return mean.requires_grad_()
        for j, loss in enumerate(losses[:-1]):
            with opt.objective(j):
                self.accelerator.backward(loss, retain_graph=True)
        self._last_objective.enter_context(opt.objective(len(losses) - 1))
        last = losses[-1]
        # the value TRL logs as "loss" is the mean over objectives; the gradient is the last loss's
        return last + (mean - last).detach()

    def _objective_losses(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        advantages: Sequence[torch.Tensor],
        num_items_in_batch: Any,
    ) -> list[torch.Tensor]:
        """TRL's GRPO loss once per advantage column, on one shared forward pass."""
        before = self._controller_state()
        after = before
        losses = []
        self._shared_forward = []
        try:
            for j, column in enumerate(advantages):
                if j:
                    self._restore_controller(before)
                losses.append(
                    super().compute_loss(
                        model, {**inputs, "advantages": column}, False, num_items_in_batch
                    )
                )
                if not j:
                    after = self._controller_state()
        finally:
            self._shared_forward = None
            self._restore_controller(after)
        return losses

    def _get_per_token_logps_and_entropies(
        self, model: torch.nn.Module, input_ids: torch.Tensor, *args: Any, **kwargs: Any
    ) -> Any:
        # Inside _objective_losses the k losses share the policy's forward pass (one graph, k
        # backward passes); any other call, or one on other inputs, runs as TRL's.
        memo = self._shared_forward
        if memo is None:
            return super()._get_per_token_logps_and_entropies(model, input_ids, *args, **kwargs)
        if memo and memo[0] is model and torch.equal(memo[1], input_ids):
            return memo[2]
        result = super()._get_per_token_logps_and_entropies(model, input_ids, *args, **kwargs)
        memo[:] = [model, input_ids, result]
        return result

    def _controller_state(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name, _MISSING) for name in _ENTROPY_CONTROLLER)

    def _restore_controller(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(_ENTROPY_CONTROLLER, state, strict=True):
            if value is not _MISSING:
                setattr(self, name, value)

    # -- logging ----------------------------------------------------------------------------------

    def record_step(self, info: mogd.StepInfo) -> None:
        """Keep one optimizer step's weights, norms and cosines for the next log line."""
        for key, value in info.as_dict(self.objective_names, prefix="mogd/").items():
            self._step_logs[key].append(value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model is not None and self.model.training and self._step_logs:
            for key, values in self._step_logs.items():
                finite = [v for v in values if math.isfinite(v)]
                # as TRL's metrics: skipped steps (NaN weights) drop out, None if nothing is left
                logs[key] = sum(finite) / len(finite) if finite else None  # type: ignore[assignment]
            self._step_logs.clear()
        super().log(logs, start_time)


class _LogMOGDStep(transformers.TrainerCallback):
    """Collects each optimizer step's StepInfo (identical on every rank) for the next log line."""

    def __init__(self, trainer: MOGDGRPOTrainer) -> None:
        self.trainer = trainer

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        opt = self.trainer.mogd_optimizer
        info = None if opt is None else opt.last_info
        if info is None:
            return
        self.trainer.record_step(info)


def _unique(names: Sequence[str]) -> list[str]:
    """Reward names as log keys: repeated names get a suffix (``name_1``...)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        n = seen.get(name, 0)
        seen[name] = n + 1
        out.append(name if n == 0 else f"{name}_{n}")
    return out
