"""The two passes over the per-objective gradients, with backend dispatch.

``gram``: G = J Jᵀ (DESIGN §1), the only thing the weightings need. ``combine``: d = Σ_i w_i g_i, the
direction handed to the inner optimizer. Both are memory-bound; on CUDA they run fused Triton kernels,
elsewhere the blocked torch paths of ``mogd.kernels``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import Literal

import torch

from mogd.kernels import combine_torch, combine_torch_list, gram_torch, gram_torch_list

__all__ = ["Backend", "combine", "gram", "resolve_backend"]

Backend = Literal["auto", "triton", "torch"]
Grads = torch.Tensor | Sequence[Sequence[torch.Tensor]] | Sequence[torch.Tensor]
_BACKENDS = ("auto", "triton", "torch")
_TRITON_GRAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def resolve_backend(backend: str, device: torch.device) -> str:
    """Pick "triton" or "torch" for tensors on ``device``.

    ``"auto"`` (the default) defers to the environment variable ``MOGD_BACKEND`` when set, then uses
    Triton for CUDA tensors when triton is importable and torch otherwise.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get("MOGD_BACKEND", "auto").strip().lower() or "auto"
        if backend not in _BACKENDS:
            raise ValueError(
                f"environment variable MOGD_BACKEND must be one of {_BACKENDS}, got {backend!r}"
            )
    if backend == "auto":
        usable = device.type == "cuda" and importlib.util.find_spec("triton") is not None
        return "triton" if usable else "torch"
    return backend


def _as_lists(grads: Grads, name: str = "grads") -> list[list[torch.Tensor]]:
    """Normalise the list form: k sequences of per-parameter tensors (a bare tensor = one parameter)."""
    if len(grads) == 0:
        raise ValueError(f"{name} must hold at least one objective, got an empty sequence")
    lists = [[g] if isinstance(g, torch.Tensor) else list(g) for g in grads]
    shapes = [tuple(t.shape) for t in lists[0]]
    for i, per_param in enumerate(lists):
        if not all(isinstance(t, torch.Tensor) for t in per_param):
            raise TypeError(f"{name}[{i}] must be a tensor or a sequence of tensors")
        if [tuple(t.shape) for t in per_param] != shapes:
            raise ValueError(
                f"{name}[{i}] has per-parameter shapes {[tuple(t.shape) for t in per_param]}, "
                f"expected {shapes} like {name}[0]: every objective needs one gradient per parameter"
            )
        for t in per_param:
            if not t.dtype.is_floating_point:
                raise TypeError(
                    f"{name}[{i}] has dtype {t.dtype}; gradients must be floating point"
                )
            if t.is_sparse:
                raise TypeError(f"{name}[{i}] is sparse; densify it with .to_dense() first")
    return lists


def _check_bank(J: torch.Tensor) -> None:
    if J.dim() != 2:
        raise ValueError(f"grads must be a [k, n] tensor, got shape {tuple(J.shape)}")
    if J.shape[0] == 0:
        raise ValueError("grads must hold at least one objective (k >= 1), got k = 0")
    if not J.dtype.is_floating_point:
        raise TypeError(f"grads has dtype {J.dtype}; gradients must be floating point")
    if J.is_sparse:
        raise TypeError("grads is sparse; densify it with .to_dense() first")
    if J.shape[1] > 1 and J.stride(1) != 1:
        raise ValueError("grads must have unit stride in its last dim; call .contiguous() first")


def gram(grads: Grads, *, backend: Backend = "auto") -> torch.Tensor:
    """Gram matrix of the per-objective gradients: G_ij = ⟨g_i, g_j⟩ (DESIGN §1, paper Eq. 6).

    Args:
        grads: a [k, n] tensor (one gradient per row) or k sequences of per-parameter tensors.
        backend: "auto", "triton" or "torch" (see :func:`resolve_backend`).

    Returns:
        float64 [k, k] tensor on the gradients' device. Accumulation is at least fp32 within short
        segments and float64 across them, whatever the input dtype.
    """
    if isinstance(grads, torch.Tensor):
        _check_bank(grads)
        if resolve_backend(backend, grads.device) == "triton":
            from mogd.kernels.gram_triton import MAX_K, gram_triton

            # "auto" falls back to torch where the kernel has no variant (float64, k > MAX_K);
            # an explicit "triton" lets the kernel raise and name the fix.
            fits = grads.dtype in _TRITON_GRAM_DTYPES and grads.shape[0] <= MAX_K
            if fits or backend == "triton":
                return gram_triton(grads)
        return gram_torch(grads)
    lists = _as_lists(grads)
    resolve_backend(backend, lists[0][0].device if lists[0] else torch.device("cpu"))
    return gram_torch_list(lists)


def combine(
    grads: Grads,
    weights: torch.Tensor | Sequence[float],
    *,
    out: torch.Tensor | Sequence[torch.Tensor] | None = None,
    backend: Backend = "auto",
    check: bool = True,
) -> torch.Tensor | list[torch.Tensor]:
    """Combined direction d = Σ_i w_i g_i (DESIGN §1), reading the gradients once.

    Args:
        grads: a [k, n] tensor or k sequences of per-parameter tensors.
        weights: k numbers (tensor or sequence), e.g. a weighting's output.
        out: where to write d: an [n] tensor (may be a row of ``grads``), or for the list form a
            sequence of per-parameter tensors. Allocated when None.
        backend: "auto", "triton" or "torch".
        check: raise ValueError for non-finite weights. Checking reads the weights on the host
            (a synchronisation for CUDA weights); MOGD passes False for weights it solved itself.

    Returns:
        d in the gradients' dtype (fp32 arithmetic; float64 for float64 input): an [n] tensor, or a
        list of per-parameter tensors for the list form.
    """
    w = torch.as_tensor(weights, dtype=torch.float64).detach().reshape(-1)
    if check and not torch.isfinite(w).all():
        raise ValueError(f"weights must be finite, got {w.tolist()}")
    if isinstance(grads, torch.Tensor):
        _check_bank(grads)
        k, n = grads.shape
        if w.numel() != k:
            raise ValueError(f"weights has {w.numel()} entries but grads has k = {k} rows")
        if out is not None:
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n,):
                raise ValueError(f"out must be a tensor of shape ({n},) for a [k, n] bank")
            if out.dtype != grads.dtype or out.device != grads.device:
                raise ValueError("out must have the same dtype and device as grads")
            if n > 1 and out.stride(0) != 1:
                raise ValueError("out must be contiguous")
        if resolve_backend(backend, grads.device) == "triton":
            from mogd.kernels.combine_triton import combine_triton

            return combine_triton(grads, w, out)
        return combine_torch(grads, w, out)
    lists = _as_lists(grads)
    if w.numel() != len(lists):
        raise ValueError(
            f"weights has {w.numel()} entries but grads has k = {len(lists)} objectives"
        )
    if out is not None:
        if isinstance(out, torch.Tensor) or len(out) != len(lists[0]):
            raise ValueError(f"out must be a sequence of {len(lists[0])} per-parameter tensors")
        for j, (o, g) in enumerate(zip(out, lists[0], strict=True)):
            if o.shape != g.shape or not o.is_contiguous():
                raise ValueError(f"out[{j}] must be a contiguous tensor of shape {tuple(g.shape)}")
    return combine_torch_list(lists, w, out)
