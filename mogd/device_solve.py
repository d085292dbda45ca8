"""The min-norm QP solved where the Gram already is (on the GPU), without reading a number back.

Every step of MOGD needs w = argmin_{w ∈ Δ} wᵀGw (MGDA, Désidéri 2012; GAPO Eq. 7) for a k×k Gram G
that was built on the device. Moving G to the host to solve it stalls the device's queue once per
step; this module solves it with tensor operations alone: no ``.item()``, no ``.cpu()``, no branch on
a tensor's value, so the host only queues work.

The method is support enumeration, exact and finite by construction. The optimum has a minimal
support S whose points g_i (i ∈ S) are affinely independent (Carathéodory), and on such a support the
KKT system

    [G_SS 1] [w_S]   [0]
    [1ᵀ   0] [−v ] = [1]

is non-singular with the optimum as its solution. All 2^k − 1 supports are solved as one batched
linear system (each padded to (k+1)×(k+1) with identity rows for w_i = 0, i ∉ S), every solution is
clipped to the simplex, and the one with the smallest KKT residual wins. Singular systems (duplicated
or dependent gradients) give non-finite or infeasible solutions and lose. The winner's KKT residual is
the certificate the host solver (:func:`mogd.min_norm`) reports: the same formula, the same scale.

k = 2 needs no linear algebra: the closed form, elementwise. The batch has 2^k − 1 systems, so the
enumeration serves k ≤ ``MAX_DEVICE_K`` (255 systems of 9×9 at k = 8:
one small batched solve). Beyond, :func:`min_norm_masked` copies G to the host and runs the exact host
solver: one synchronisation per step, a documented cost of many objectives.
"""

from __future__ import annotations

import torch

from mogd.solver import min_norm

__all__ = ["MAX_DEVICE_K", "kkt_residual_tensor", "min_norm_masked"]

MAX_DEVICE_K = 8


def _supports(k: int, device: torch.device) -> torch.Tensor:
    """All non-empty subsets of range(k) as a [2^k − 1, k] float64 0/1 matrix: the bits of 1..2^k−1,
    made on the device (a tensor built on the host would be a synchronous copy every step)."""
    codes = torch.arange(1, 2**k, device=device)[:, None]
    return ((codes >> torch.arange(k, device=device)) & 1).to(torch.float64)


def _closed_form_two(Gm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """k = 2: w_1 = clip((G_22 − G_12) / (G_11 + G_22 − 2 G_12), 0, 1) (½ when g_1 = g_2; the one
    allowed objective when the mask allows one), as a [1, 2] candidate."""
    a, b, c = Gm[0, 0], Gm[1, 1], Gm[0, 1]
    denom = a + b - 2.0 * c
    t = torch.where(denom > 0, ((b - c) / torch.where(denom > 0, denom, 1.0)).clamp(0.0, 1.0), 0.5)
    t = torch.where(mask[0] & ~mask[1], 1.0, torch.where(mask[1] & ~mask[0], 0.0, t))
    return torch.stack([t, 1.0 - t])[None]


def kkt_residual_tensor(G: torch.Tensor, w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Violation of the KKT conditions of min_Δ wᵀGw at w (batched over w's leading dims) among the
    objectives in ``mask``, relative to max_i G_ii: max(v − min_i (Gw)_i, max_{w_i > 0} |(Gw)_i − v|)
    with v = wᵀGw. 0 when exact (the formula of :func:`mogd.solver.kkt_residual`)."""
    Gw = w @ G  # G is symmetric
    v = (w * Gw).sum(-1, keepdim=True)
    gap = Gw - v
    below = torch.where(mask, -gap, torch.zeros_like(gap)).amax(-1)
    on_support = torch.where(w > 0, gap.abs(), torch.zeros_like(gap)).amax(-1)
    scale = G.diagonal().amax().clamp_min(torch.finfo(torch.float64).tiny)
    return torch.maximum(below, on_support).clamp_min(0.0) / scale


def min_norm_masked(G: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w, kkt): the min-norm point over the objectives where ``mask`` holds, on G's device.

    Args:
        G: k×k float64 Gram matrix (PSD, finite) on any device.
        mask: [k] bool, the objectives allowed in the support (at least one True for a meaningful
            answer; with none, w = 0 and kkt = 0).

    Returns:
        w: float64 [k] on the simplex over ``mask`` (0 elsewhere). kkt: float64 scalar tensor, the
        KKT residual of w on G restricted to ``mask``, relative to its largest diagonal entry
        (the certificate of :func:`mogd.min_norm`).
    """
    k = G.shape[0]
    if k > MAX_DEVICE_K:
        return _on_host(G, mask)
    G = (G + G.mT) * 0.5  # fp32 partial sums need not be symmetric; the host solver does this too
    maskf = mask.to(torch.float64)
    scale = (G.diagonal() * maskf).amax().clamp_min(torch.finfo(torch.float64).tiny)
    Gm = G * (maskf[:, None] * maskf[None, :]) / scale
    if k == 2:
        w = _closed_form_two(Gm, mask)
        return _best(Gm, w, mask, torch.ones(1, dtype=torch.bool, device=G.device))
    S = _supports(k, G.device)  # [m, k]
    m = S.shape[0]
    M = torch.zeros(m, k + 1, k + 1, dtype=torch.float64, device=G.device)
    M[:, :k, :k] = Gm * (S[:, :, None] * S[:, None, :])
    M[:, :k, :k] += torch.diag_embed(1.0 - S)  # w_i = 0 off the support
    M[:, :k, k] = S
    M[:, k, :k] = S
    rhs = torch.zeros(m, k + 1, 1, dtype=torch.float64, device=G.device)
    rhs[:, k] = 1.0
    x, _ = torch.linalg.solve_ex(M, rhs)  # no error check: singular systems are filtered below
    w = x[:, :k, 0]
    usable = torch.isfinite(w).all(-1) & ((S * (1.0 - maskf)).sum(-1) == 0)
    w = torch.where(usable[:, None], w, torch.zeros_like(w)).clamp_min(0.0) * S
    total = w.sum(-1, keepdim=True)
    usable &= total[:, 0] > 0
    w = w / torch.where(total > 0, total, torch.ones_like(total))
    return _best(Gm, w, mask, usable)


def _best(
    Gm: torch.Tensor, w: torch.Tensor, mask: torch.Tensor, usable: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The usable candidate (row of w) with the smallest KKT residual, and that residual."""
    residual = kkt_residual_tensor(Gm, w, mask)
    residual = torch.where(usable, residual, torch.full_like(residual, torch.inf))
    best = residual.argmin().reshape(1)  # index_select, not w[best]: that reads best on the host
    any_active = mask.any()
    w_best = torch.where(any_active, w.index_select(0, best)[0], 0.0)
    kkt = torch.where(any_active, residual.index_select(0, best)[0], 0.0)
    return w_best, kkt


def _on_host(G: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k > MAX_DEVICE_K: the exact host solver on the masked sub-problem (one synchronisation)."""
    active = mask.cpu().nonzero().flatten()
    w = torch.zeros(G.shape[0], dtype=torch.float64)
    kkt = torch.zeros((), dtype=torch.float64)
    if active.numel():
        res = min_norm(G.detach().cpu()[active][:, active])
        w[active] = res.weights
        kkt = torch.tensor(res.kkt_residual, dtype=torch.float64)
    return w.to(G.device), kkt.to(G.device)
