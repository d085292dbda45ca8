"""The update in Gram space: d = Σ_i w_i g_i + r, its norm and its clipping, from one extended Gram.

A regularizer R (a KL to a reference, an entropy bonus, an auxiliary loss) that every objective shares
stays out of the trade-off: its gradient r = ∇R is added to the update with coefficient 1 and never
gets a weight. The bank stores r as one more row after the k objectives' (:data:`mogd.bank.REGULARIZER`),
so the single Gram pass gives the extended (k+1)×(k+1) Gram

    Ĝ = [[G, c], [cᵀ, ‖r‖²]],   G_ij = ⟨g_i, g_j⟩,   c_i = ⟨g_i, r⟩,

the weights are solved on G alone, and the update's coefficients on the bank rows are a = (w, 1), with

    ‖d‖² = aᵀĜa = wᵀGw + 2 wᵀc + ‖r‖²,

all that clipping as ``torch.nn.utils.clip_grad_norm_`` does it needs: no pass over the gradients.
Without a regularizer Ĝ = G and a = w.
"""

from __future__ import annotations

import torch

__all__ = [
    "CLIP_EPS",
    "clip_coef",
    "direction_norm",
    "objectives_gram",
    "row_coefficients",
]

# clip_grad_norm_'s guard against division by zero: clipping here equals clipping the same d there
CLIP_EPS = 1e-6


def objectives_gram(gram: torch.Tensor, k: int) -> torch.Tensor:
    """G: the k objectives' block of the extended Gram Ĝ, the only input of the weighting."""
    return gram[:k, :k]


def row_coefficients(weights: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """a = (w_1, ..., w_k, 1): the update's coefficient on each bank row (the regularizer's is 1)."""
    extra = gram.shape[0] - weights.shape[0]
    return torch.cat([weights, weights.new_ones(extra)])


def direction_norm(gram: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """‖d‖ = √(aᵀĜa) for d = Σ_rows a_j J_j (clamped at 0 against rounding)."""
    return (coefficients @ gram @ coefficients).clamp_min(0.0).sqrt()


def clip_coef(norm: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    """min(1, max_norm / (‖d‖ + 1e-6)), the factor clip_grad_norm_ applies (1 without max_norm)."""
    if max_norm is None:
        return torch.ones_like(norm)
    coef = max_norm / (norm + CLIP_EPS)
    return torch.where(torch.isfinite(coef), coef.clamp(max=1.0), 1.0)
