"""The torch.optim.Optimizer protocol for an optimizer that wraps another one.

:class:`mogd.MOGD` changes what the gradients are, not how parameters are stepped, so everything
torch.optim users touch (``param_groups``, ``state``, ``defaults``, ``state_dict``, step and state-dict
hooks) is the inner optimizer's. LR schedulers, ``GradScaler``, ``accelerate`` and checkpointing then
see an ordinary optimizer. The wrapper's own state travels in the state dict under one key.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["WrappedOptimizer"]


class WrappedOptimizer(Optimizer):
    """An Optimizer whose groups, state and defaults are those of ``inner``.

    Subclasses implement ``step`` and may keep their own state under ``STATE_KEY`` of the state dict
    through :meth:`own_state_dict`, :meth:`check_own_state` and :meth:`load_own_state`.
    """

    STATE_KEY = "wrapper"

    def __init__(self, inner: Optimizer) -> None:
        if isinstance(inner, WrappedOptimizer):
            raise TypeError(
                f"inner is already a {type(inner).__name__}; wrap the base optimizer (e.g. AdamW) once"
            )
        if not isinstance(inner, Optimizer):
            raise TypeError(
                f"inner must be a torch.optim.Optimizer (e.g. torch.optim.AdamW(params)), "
                f"got {type(inner).__name__}"
            )
        self.inner = inner
        # What Optimizer.__init__ sets up, minus the parameter groups, which belong to ``inner``.
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()
        self._warned_capturable_if_run_uncaptured = True

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
        """Add a group to the inner optimizer."""
        self.inner.add_param_group(param_group)

    def trainable_params(self) -> list[torch.Tensor]:
        """The parameters of all groups that require grad, each once, in group order."""
        unique: dict[int, torch.Tensor] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    unique.setdefault(id(p), p)
        return list(unique.values())

    def own_state_dict(self) -> dict[str, Any] | None:
        """The wrapper's own state (None: nothing to save)."""
        return None

    def check_own_state(self, own: dict[str, Any]) -> None:
        """Validate saved own state before anything is loaded (raise to refuse it)."""

    def load_own_state(self, own: dict[str, Any]) -> None:
        """Restore saved own state, after the inner optimizer's."""

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict, plus the wrapper's own under ``STATE_KEY``."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        sd = self.inner.state_dict()
        own = self.own_state_dict()
        if own is not None:
            sd[self.STATE_KEY] = own
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
        own = sd.pop(self.STATE_KEY, None)
        if own is not None:
            self.check_own_state(own)
        self.inner.load_state_dict(sd)
        if own is not None:
            self.load_own_state(own)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)
