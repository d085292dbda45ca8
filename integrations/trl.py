"""GAPO inside TRL: :class:`MOGDGRPOTrainer`, GRPO with one objective per reward (or group of rewards).

TRL's ``GRPOTrainer`` collapses its reward functions into one scalar (a weighted sum, then group
normalisation) and takes one policy-gradient step on it. This trainer keeps the objectives apart:

1. **Advantages per objective.** Each objective's reward (one reward function by default, or the
   weighted sum of a group of them, ``objectives=``) is group-normalised on its own, with TRL's
   ``scale_rewards`` and TRL's 1e-4 in the denominator: A_o = (r_o - mean_group(r_o)) /
   (std(r_o) + 1e-4) (:func:`group_advantages`); a group whose rewards are all equal gets A_o = 0
   exactly.
2. **TRL's loss, split.** TRL's GRPO loss is L(A) = P(A) + R: a policy-gradient term P, linear in the
   advantages, plus the terms that do not depend on them, R = β·KL - entropy bonus + MoE aux loss.
   Objective o's loss is P(A_o) alone (TRL's ``_compute_loss`` with β = 0 and the bonus and aux loss
   off) and R is TRL's loss with every advantage 0, so the same ``loss_type``, clipping, masks,
   importance sampling and normalisations apply. All of them share one forward pass.
3. **Pareto direction.** Each P(A_o) is backpropagated into its own gradient row of :class:`mogd.MOGD`
   (``with opt.objective(o)``) and R into the regularizer's row (``with opt.regularizer()``); MOGD
   solves the weighting's w (GAPO Eq. 6–7, P-GAPO Eq. 8, MGDA, Linear; Li et al., ACL 2025, arXiv
   2507.01915) on the objectives' Gram alone and steps along d = Σ_o w_o g_o + ∇R, clipped to
   ``max_grad_norm``. The regularizer is outside the trade-off: an objective without signal has an
   exactly zero gradient and weight 0 at any β, and R is counted once, whatever k and w are. With
   ``probe=`` (paper App. B) the weights come from the probe's k gradients and one backward of
   Σ_o w_o P_o + R runs instead (``opt.backward``).

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
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import transformers
import trl
from trl.trainer.utils import nanstd

import mogd

from .grpo import (
    Objectives,
    check_trl_contract,
    constant_groups,
    group_advantages,
    group_objectives,
    resolve_weighting,
    unique_names,
)
from .ppo.optim import find_module

__all__ = ["MOGDGRPOTrainer", "group_advantages"]

# What TRL's _compute_loss logs about the regularizer's terms; the policy-gradient calls log the rest
# (clip ratios, per objective). Each is kept from one of the two kinds of call, so that a metric is
# not averaged with copies of itself or with the zero-advantage call's empty clip ratios.
REGULARIZER_METRICS = frozenset({"kl", "entropy", "entropy_coef", "aux_loss"})

# The sums TRL logs from its own scalarisation (the weighted sum of all reward functions): under a
# Pareto weighting they are not the training signal, so they are logged under "sum/...".
SUMMED_METRICS = ("reward", "reward_std", "frac_reward_zero_std")


class MOGDGRPOTrainer(trl.GRPOTrainer):
    """``trl.GRPOTrainer`` with GAPO (or P-GAPO, MGDA, Linear) across its reward functions.

    Takes every argument of ``trl.GRPOTrainer``, plus:

    Args:
        weighting: the map Gram ↦ weights, default ``mogd.GAPO(p=1)``; ``mogd.MGDA()``, a
            ``mogd.PGAPO([...])`` / ``mogd.Linear([...])`` with one entry per objective, or the
            class ``mogd.PGAPO`` / ``mogd.Linear`` to take the entries from ``args.reward_weights``.
            ``"sum"`` is stock TRL multi-reward GRPO, unchanged (no MOGD, TRL's clipping), for
            baselines.
        objectives: ``{name: reward function names or indices}``, the reward functions each
            objective sums (with their ``reward_weights``) into its reward; a name or index alone is a
            group of one. Default: one objective per reward function, named after it. Every
            function with a nonzero reward weight belongs to exactly one objective.
        probe: the paper's memory saver (App. B): the weights come from the per-objective
            gradients of this module only (a module of the model, or its name, e.g. ``"lm_head"``),
            then ONE backward of Σ_o w_o P_o + R runs through the whole model. Each micro-batch is
            weighted by its own probe Gram; the logs show the last one's. Default: full mode, k + 1
            backward passes into k + 1 full gradients (k without a regularizer).
        max_norm: clip the update d = Σ_o w_o g_o + ∇R to this global L2 norm (all ranks); default
            ``args.max_grad_norm``, and 0 or None switches clipping off. TRL's own clipping is off:
            it would clip one objective's gradient, not d.

    ``args.reward_weights`` (TRL's, one per reward function) mean, per weighting:

    - any weighting: 0 = monitor only. The function is scored and TRL logs its
      ``rewards/<name>/mean|std``, but it belongs to no objective and is not trained on.
    - ``"sum"``: TRL's meaning exactly (the weights of TRL's sum, with its
      ``multi_objective_aggregation``).
    - the class ``mogd.PGAPO`` / ``mogd.Linear``: the preference λ (normalised to sum 1) or the
      linear weights c of the objectives, one function each; Linear's c scales the gradient (with one
      reward, ``reward_weights=[2]`` doubles the step, where stock GRPO's normalisation cancels it).
    - an instance (GAPO, MGDA, PGAPO([...]), Linear([...])): the weights of the functions inside their
      objective's reward, r_o = Σ_{j ∈ o} c_j r_j. A function alone in its objective takes 1 (or 0):
      the group normalisation would cancel any other positive weight.

    Logs, per optimizer step, beside TRL's: ``mogd/weight/<objective>``, ``mogd/norm/<objective>``
    (gradient norms), ``mogd/cosine/<a>/<b>``, ``mogd/direction_norm`` (‖d‖ before clipping) and,
    with a regularizer, ``mogd/regularizer_norm`` and ``mogd/regularizer_cosine/<objective>``; per
    generation ``frac_reward_zero_std/<objective>`` (share of completions in groups whose objective
    reward is constant: advantage 0) and ``advantage_std/<objective>``. TRL's ``reward``,
    ``reward_std`` and ``frac_reward_zero_std`` describe TRL's weighted sum of all the rewards,
    which is not what trains: they are logged as ``sum/reward`` etc., and in the completions table
    TRL's ``advantage`` column is NaN beside an ``advantage/<objective>`` column per objective
    (under ``"sum"`` all of TRL's logs keep their names and meaning). ``loss`` is
    mean_o P(A_o) + R, TRL's ``kl``, ``entropy`` and ``clip_ratio/*`` as in stock GRPO (the clip
    ratios averaged over the objectives' calls). ``args.multi_objective_aggregation`` applies
    only to ``"sum"``: ``"normalize_then_sum"`` is refused otherwise.
    """

    def __init__(
        self,
        *args: Any,
        weighting: mogd.Weighting
        | type[mogd.PGAPO]
        | type[mogd.Linear]
        | Literal["sum"]
        | None = None,
        objectives: Objectives | None = None,
        probe: str | torch.nn.Module | None = None,
        max_norm: float | None = None,
        **kwargs: Any,
    ) -> None:
        if probe is not None and not isinstance(probe, (str, torch.nn.Module)):
            raise TypeError(
                f"probe must be a module of the model or its name (e.g. 'lm_head'), got {probe!r}"
            )
        if weighting == "sum" and (probe is not None or max_norm is not None):
            raise ValueError(
                'weighting="sum" is stock TRL GRPO: it takes no probe= or max_norm= (TRL clips to '
                "args.max_grad_norm)"
            )
        check_trl_contract()
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
        self.stock = weighting == "sum"
        aggregation = getattr(self.args, "multi_objective_aggregation", "sum_then_normalize")
        if not self.stock and aggregation != "sum_then_normalize":
            raise ValueError(
                f"multi_objective_aggregation={aggregation!r} does not apply to MOGDGRPOTrainer: each "
                "objective is group-normalised on its own and the weighting replaces the sum. Drop "
                'it, or use weighting="sum" for stock TRL GRPO with it'
            )
        function_names = unique_names(self.reward_func_names)
        function_weights = [float(w) for w in self.reward_weights.tolist()]
        self.objectives = group_objectives(objectives, function_names, function_weights)
        self.objective_names = list(self.objectives)
        self.weighting, within = resolve_weighting(
            weighting, self.objectives, function_weights, function_names
        )
        # c_j in r_o = Σ_{j ∈ o} c_j r_j (1 where reward_weights went to the weighting)
        self._member_weights = torch.tensor(within, dtype=torch.float32)
        self.probe = probe
        if max_norm is None:
            max_norm = self.args.max_grad_norm
        if max_norm is not None and (not math.isfinite(max_norm) or max_norm < 0):
            raise ValueError(
                f"max_norm must be a finite number >= 0 (0 = no clipping), got {max_norm}"
            )
        self.max_norm = max_norm or None
        self.mogd_optimizer: mogd.MOGD | None = None
        self._rewards_per_function: torch.Tensor | None = None
        self._last_pass: contextlib.ExitStack | None = None
        self._shared_forward: list[Any] | None = None
        self._step_logs: dict[str, list[float]] = defaultdict(list)
        self.add_callback(_LogMOGDStep(self))

    # -- the optimizer: MOGD around the one TRL built ---------------------------------------------

    def create_optimizer(self, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        inner = super().create_optimizer(*args, **kwargs)
        if self.stock:
            return inner
        if isinstance(inner, mogd.MOGD):
            if inner is self.mogd_optimizer:
                return inner  # train() called again
            raise TypeError(
                "optimizers= holds a mogd.MOGD; pass the plain optimizer (e.g. AdamW): the trainer "
                "wraps it with its weighting= and max_norm="
            )
        assert isinstance(self.weighting, mogd.Weighting)
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

    def _clip_grad_norm(self, model: torch.nn.Module) -> Any:
        # Before MOGD.step a parameter's .grad is one objective's bank row (full mode) or an
        # unfinished combination (probe mode under a GradScaler): clipping it here would clip the
        # wrong vector. MOGD clips the update d itself (max_norm).
        return super()._clip_grad_norm(model) if self.stock else None

    def _get_grad_norm(self, model: torch.nn.Module, grad_norm: Any = None) -> Any:
        # Same reason; the norm of the step's update is logged as mogd/direction_norm.
        return super()._get_grad_norm(model, grad_norm) if self.stock else None

    # -- rewards and advantages per objective -----------------------------------------------------

    def _calculate_rewards(self, inputs: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        rewards = super()._calculate_rewards(inputs, *args, **kwargs)
        self._rewards_per_function = rewards  # [all processes' completions, functions]
        return rewards

    def objective_rewards(self, rewards: torch.Tensor) -> torch.Tensor:
        """``[N, k]`` objective rewards r_o = Σ_{j ∈ o} c_j r_j from ``[N, functions]`` rewards
        (NaN-skipping as TRL's sum; NaN where every function of the objective returned None)."""
        weighted = rewards * self._member_weights.to(rewards)
        columns = []
        for members in self.objectives.values():
            part = weighted[:, members]
            columns.append(part.nansum(dim=1).masked_fill(torch.isnan(part).all(dim=1), math.nan))
        return torch.stack(columns, dim=1)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        rewards, self._rewards_per_function = self._rewards_per_function, None
        if rewards is None:
            raise RuntimeError(
                f"TRL {trl.__version__} scored completions without GRPOTrainer._calculate_rewards, "
                "so the per-reward scores never reached MOGDGRPOTrainer; use a TRL version of the "
                "mogd[trl] extra"
            )
        training = self.model is not None and self.model.training
        groups = self.num_generations if training else self.num_generations_eval
        assert groups is not None
        objective_rewards = self.objective_rewards(rewards)
        advantages = group_advantages(objective_rewards, groups, self.scale_rewards)
        mode = "train" if training else "eval"
        no_signal = constant_groups(objective_rewards.view(-1, groups, len(self.objectives)))
        for o, name in enumerate(self.objective_names):
            self._metrics[mode][f"frac_reward_zero_std/{name}"].append(
                no_signal[:, o].float().mean().item()
            )
            self._metrics[mode][f"advantage_std/{name}"].append(nanstd(advantages[:, o]).item())
        if self.stock:
            return output  # TRL's advantages train
        # the completions table: TRL's summed advantage is not the training signal
        completions: dict[str, Any] = self._logs
        table = completions["advantages"]
        for _ in range(min(len(table), advantages.shape[0])):
            table.pop()
        table.extend([math.nan] * advantages.shape[0])
        for o, name in enumerate(self.objective_names):
            completions["extra"][f"advantage/{name}"].extend(advantages[:, o].tolist())
        rank = self.accelerator.process_index
        output["objective_advantages"] = advantages[rank * len(inputs) : (rank + 1) * len(inputs)]
        return output

    # -- one policy-gradient loss per objective, the regularizer apart ----------------------------

    def training_step(
        self, model: torch.nn.Module, inputs: Any, num_items_in_batch: Any = None
    ) -> torch.Tensor:
        # compute_loss backpropagates all passes but the last itself and leaves the last (the
        # regularizer's, or objective k-1's) open, so that the Trainer's own backward (with its
        # scaling and AMP handling) lands in that row.
        with contextlib.ExitStack() as last_pass:
            self._last_pass = last_pass
            try:
                return super().training_step(model, inputs, num_items_in_batch)
            finally:
                self._last_pass = None

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor:
        opt = self.mogd_optimizer
        if opt is None or return_outputs or self._last_pass is None or not torch.is_grad_enabled():
            # stock mode, or evaluation: TRL's loss on its own scalarised advantages
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        policy, regularizer = self.split_losses(model, inputs, num_items_in_batch)
        # logged as "loss": the mean over objectives of TRL's loss on that objective's advantages
        logged = torch.stack([loss.detach() for loss in policy]).mean()
        if regularizer is not None:
            logged = logged + regularizer.detach()
        if self.probe is not None:
            opt.backward(policy, regularizer=regularizer, scaler=self.accelerator.scaler)
            # the one weighted backward has run: the Trainer's backward of this leaf reaches no
            # parameter
            return logged.requires_grad_()
        passes = [(opt.objective(o), loss) for o, loss in enumerate(policy)]
        if regularizer is not None:
            passes.append((opt.regularizer(), regularizer))
        for context, loss in passes[:-1]:
            with context:
                self.accelerator.backward(loss, retain_graph=True)
        context, last = passes[-1]
        self._last_pass.enter_context(context)
        return last + (logged - last).detach()

    def split_losses(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """TRL's loss L(A) = P(A) + R, split on one shared forward pass: [P(A_o) for each objective]
        and R (None when TRL has no term beside the policy gradient).

        R is TRL's loss with every advantage 0 (its policy-gradient term is then 0 with a zero
        gradient, for every ``loss_type``: each is linear in A); P(A_o) is TRL's loss with β = 0 and
        the entropy bonus and aux loss off. TRL's normalisations (``loss_type``, accumulation) are
        linear, so P(A) + R is TRL's loss on A (tests/test_trl.py checks it against stock TRL)."""
        columns = inputs["objective_advantages"]
        regularizer = None
        self._shared_forward = []
        try:
            if self._has_regularizer():
                zero = torch.zeros_like(columns[:, 0])
                # first: this call's forward pass computes the aux loss the later ones reuse
                with self._metrics_kept(REGULARIZER_METRICS.__contains__):
                    regularizer = super().compute_loss(
                        model, {**inputs, "advantages": zero}, False, num_items_in_batch
                    )

            def policy_metric(key: str) -> bool:
                return regularizer is None or key not in REGULARIZER_METRICS

            policy = []
            with self._regularizer_off(), self._metrics_kept(policy_metric):
                for o in range(columns.shape[1]):
                    policy.append(
                        super().compute_loss(
                            model,
                            {**inputs, "advantages": columns[:, o]},
                            False,
                            num_items_in_batch,
                        )
                    )
        finally:
            self._shared_forward = None
        return policy, regularizer

    def _has_regularizer(self) -> bool:
        # TRL's terms beside the policy gradient; the entropy bonus (TRL >= 1.10 has one) stays on
        # under adaptive control even while its coefficient is gated to 0
        return (
            self.beta != 0.0
            or bool(getattr(self, "_entropy_bonus_enabled", False))
            or bool(getattr(self, "aux_loss_enabled", False))
        )

    @contextlib.contextmanager
    def _regularizer_off(self) -> Iterator[None]:
        """TRL's loss without β·KL, the entropy bonus (and its controller) and the aux loss."""
        switches = {"beta": 0.0, "_entropy_bonus_enabled": False, "aux_loss_enabled": False}
        saved = {name: getattr(self, name) for name in switches if hasattr(self, name)}
        try:
            for name in saved:
                setattr(self, name, switches[name])
            yield
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

    @contextlib.contextmanager
    def _metrics_kept(self, keep: Callable[[str], bool]) -> Iterator[None]:
        """Drop what TRL's loss logs inside the block under the keys ``keep`` rejects."""
        metrics = self._metrics["train"]
        before = {key: len(values) for key, values in metrics.items()}
        try:
            yield
        finally:
            for key in list(metrics):
                if not keep(key):
                    del metrics[key][before.get(key, 0) :]
                    if key not in before:
                        del metrics[key]

    def _get_per_token_logps_and_entropies(
        self, model: torch.nn.Module, input_ids: torch.Tensor, *args: Any, **kwargs: Any
    ) -> Any:
        # Inside split_losses the losses share the policy's forward pass (one graph, k + 1 backward
        # passes); any other call, or one on other inputs, runs as TRL's.
        memo = self._shared_forward
        if memo is None:
            return super()._get_per_token_logps_and_entropies(model, input_ids, *args, **kwargs)
        if memo and memo[0] is model and torch.equal(memo[1], input_ids):
            return memo[2]
        result = super()._get_per_token_logps_and_entropies(model, input_ids, *args, **kwargs)
        memo[:] = [model, input_ids, result]
        return result

    # -- logging ----------------------------------------------------------------------------------

    def record_step(self, info: mogd.StepInfo) -> None:
        """Keep one optimizer step's weights, norms and cosines for the next log line."""
        for key, value in info.as_dict(self.objective_names, prefix="mogd/").items():
            self._step_logs[key].append(value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        training = self.model is not None and self.model.training
        if not self.stock:
            metrics = self._metrics["train" if training else "eval"]
            for key in SUMMED_METRICS:
                if key in metrics:
                    metrics[f"sum/{key}"] = metrics.pop(key)
        if training and self._step_logs:
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
