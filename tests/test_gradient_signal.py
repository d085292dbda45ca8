"""The half-batch cosine (integrations/ppo/gradient_signal.py) against what it must measure: 1 for a
gradient that is all signal, about 0 for pure noise, SNR / (1 + SNR) in between."""

import math

import pytest
import torch

from integrations.ppo.gradient_signal import half_batch_cosines


def linear_losses(x: torch.Tensor, theta: torch.Tensor, k: int = 1):
    """k objectives L_i(rows) = mean_r ⟨x_r, θ⟩ · (i + 1): ∇L_i = (i + 1) · mean of the rows."""
    return lambda chunk: [(x[chunk.rows] @ theta).mean() * (i + 1) for i in range(k)]


def test_identical_halves_are_all_signal():
    g = torch.Generator().manual_seed(0)
    half = torch.randn(8, 50, generator=g, dtype=torch.float64)
    x = torch.cat([half, half])
    theta = torch.zeros(50, dtype=torch.float64, requires_grad=True)
    cos = half_batch_cosines(linear_losses(x, theta, k=2), torch.arange(16), [theta])
    assert cos == pytest.approx([1.0, 1.0], abs=1e-12)


@pytest.mark.parametrize("snr", [0.0, 1.0, 4.0])
def test_cosine_is_snr_over_one_plus_snr(snr):
    # rows x_r = s + n_r with n_r ~ N(0, I_d): a half of h rows has noise of total variance d / h,
    # so SNR = ‖s‖² h / d per half and E cos ≈ SNR / (1 + SNR); its spread is O(1/√d)
    d, h = 20000, 10
    g = torch.Generator().manual_seed(1)
    s = torch.randn(d, generator=g, dtype=torch.float64)
    s *= math.sqrt(snr * d / h) / s.norm()
    x = s + torch.randn(2 * h, d, generator=g, dtype=torch.float64)
    theta = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    (cos,) = half_batch_cosines(linear_losses(x, theta), torch.arange(2 * h), [theta])
    assert cos == pytest.approx(snr / (1 + snr), abs=0.05)


def test_zero_gradient_is_nan_and_too_few_rows_are_refused():
    theta = torch.zeros(3, requires_grad=True)
    x = torch.zeros(4, 3)
    (cos,) = half_batch_cosines(linear_losses(x, theta), torch.arange(4), [theta])
    assert math.isnan(cos)
    with pytest.raises(ValueError, match="at least 2"):
        half_batch_cosines(linear_losses(x, theta), torch.arange(1), [theta])
