"""StepInfo: what one MOGD step computed, kept on the device until somebody reads it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["StepInfo", "skip_message"]


def skip_message(G: torch.Tensor, step: int, k: int) -> str:
    """Why a step was skipped: the objectives (or the regularizer: row k of an extended Gram) whose
    gradient holds NaN/Inf (read off the Gram, whose G_ii is then non-finite), or the combined
    gradient when the Gram is finite (probe mode)."""
    finite = torch.isfinite(G.cpu())
    rows = range(G.shape[0])
    bad = [i for i in rows if not bool(finite[i, i])]
    bad = bad or [i for i in rows if not bool(finite[i].all())]
    parts = []
    if any(i < k for i in bad):
        parts.append("objective(s) " + ", ".join(str(i) for i in bad if i < k))
    if any(i >= k for i in bad):
        parts.append("the regularizer")
    where = " and ".join(parts) if parts else "the combined gradient"
    return f"non-finite gradient (NaN/Inf) in {where} at MOGD step {step}"


class StepInfo:
    """What one :meth:`mogd.MOGD.step` computed (identical on every rank).

    The step leaves its results where it computed them (on the GPU for a CUDA model) and this object
    copies them to the CPU the first time a field is read, so a training loop that does not log this
    step never waits for the device. Fields, as CPU float64 tensors and Python numbers:

    ``gram`` is handed in as the step's extended Gram (:mod:`mogd.update`): with a regularizer its row
    k holds ⟨g_i, ∇R⟩ and ‖∇R‖², split off here.

    Attributes:
        weights: [k], d = Σ_i weights_i g_i (NaN when the step was skipped on the host's decision).
        alpha: [k], the simplex point of the min-norm QP (None without a QP, e.g. P-GAPO).
        norms: [k], n_i = ‖g_i‖.
        gram: [k, k], G_ij = ⟨g_i, g_j⟩ (of the probe's gradients in probe mode).
        cosine: [k, k], G_ij / (n_i n_j) (0 where a norm is 0).
        kkt_residual: the QP's KKT residual (None without a QP or when skipped).
        skipped: True when non-finite gradients made the step a no-op.
        direction_norm: ‖d‖ of the direction handed to the inner optimizer, before clipping
            (NaN when skipped); with a regularizer d = Σ_i w_i g_i + ∇R.
        regularizer_norm: ‖∇R‖ (of the probe's gradient in probe mode); None without a regularizer.
        regularizer_cosine: [k], ⟨g_i, ∇R⟩ / (n_i ‖∇R‖) (0 where a norm is 0); None without one.
    """

    __slots__ = ("_host", "_raw")

    def __init__(
        self,
        weights: torch.Tensor,
        alpha: torch.Tensor | None,
        gram: torch.Tensor,
        kkt_residual: torch.Tensor | float | None,
        skipped: torch.Tensor | bool,
        direction_norm: torch.Tensor | float,
    ) -> None:
        self._raw: dict[str, Any] = {
            "weights": weights,
            "alpha": alpha,
            "gram": gram,
            "kkt_residual": kkt_residual,
            "skipped": skipped,
            "direction_norm": direction_norm,
        }
        self._host: dict[str, Any] | None = None

    def _field(self, name: str) -> Any:
        if self._host is None:
            host: dict[str, Any] = {}
            for key, value in self._raw.items():
                if isinstance(value, torch.Tensor):
                    value = value.detach().to("cpu", torch.float64)
                host[key] = value
            skipped = bool(host["skipped"])
            host["skipped"] = skipped
            host["direction_norm"] = float(host["direction_norm"])
            k = host["weights"].numel()
            full = host["gram"]
            # the regularizer's row (⟨g_1, r⟩, ..., ⟨g_k, r⟩, ‖r‖²), r = ∇R, or None
            host["gram"], host["regularizer"] = full[:k, :k], full[k] if len(full) > k else None
            kkt = host["kkt_residual"]
            host["kkt_residual"] = None if kkt is None or skipped else float(kkt)
            if skipped:
                host["weights"] = torch.full_like(host["weights"], float("nan"))
                host["alpha"] = None
                host["direction_norm"] = float("nan")
            self._host = host
            self._raw = {}
        return self._host[name]

    @property
    def weights(self) -> torch.Tensor:
        return self._field("weights")

    @property
    def alpha(self) -> torch.Tensor | None:
        return self._field("alpha")

    @property
    def gram(self) -> torch.Tensor:
        return self._field("gram")

    @property
    def norms(self) -> torch.Tensor:
        return self.gram.diagonal().clamp(min=0).sqrt()

    @property
    def cosine(self) -> torch.Tensor:
        norms = self.norms
        outer = norms[:, None] * norms[None, :]
        return torch.where(outer > 0, self.gram / torch.where(outer > 0, outer, 1.0), 0.0)

    @property
    def regularizer_norm(self) -> float | None:
        row = self._field("regularizer")
        return None if row is None else float(row[-1].clamp(min=0).sqrt())

    @property
    def regularizer_cosine(self) -> torch.Tensor | None:
        row = self._field("regularizer")
        if row is None:
            return None
        outer = self.norms * row[-1].clamp(min=0).sqrt()
        return torch.where(outer > 0, row[:-1] / torch.where(outer > 0, outer, 1.0), 0.0)

    @property
    def kkt_residual(self) -> float | None:
        return self._field("kkt_residual")

    @property
    def skipped(self) -> bool:
        return self._field("skipped")

    @property
    def direction_norm(self) -> float:
        return self._field("direction_norm")

    def as_dict(self, names: Sequence[str] | None = None, prefix: str = "") -> dict[str, float]:
        """Flat floats for a logger: ``weight/<name>``, ``norm/<name>``, ``alpha/<name>``,
        ``cosine/<a>/<b>`` (a before b), ``kkt_residual``, ``direction_norm`` (‖d‖ before
        clipping) and ``skipped`` (0.0 or 1.0); with a regularizer also ``regularizer_norm`` and
        ``regularizer_cosine/<name>`` (the cosine of ∇R with each objective's gradient)."""
        weights, norms, cosine, alpha = self.weights, self.norms, self.cosine, self.alpha
        k = weights.numel()
        labels = [str(i) for i in range(k)] if names is None else [str(n) for n in names]
        if len(labels) != k:
            raise ValueError(f"names has {len(labels)} entries but there are k = {k} objectives")
        out: dict[str, float] = {}
        for i, name in enumerate(labels):
            out[f"{prefix}weight/{name}"] = float(weights[i])
            out[f"{prefix}norm/{name}"] = float(norms[i])
            if alpha is not None:
                out[f"{prefix}alpha/{name}"] = float(alpha[i])
        for i in range(k):
            for j in range(i + 1, k):
                out[f"{prefix}cosine/{labels[i]}/{labels[j]}"] = float(cosine[i, j])
        regularizer_cosine, regularizer_norm = self.regularizer_cosine, self.regularizer_norm
        if regularizer_cosine is not None and regularizer_norm is not None:
            for i, name in enumerate(labels):
                out[f"{prefix}regularizer_cosine/{name}"] = float(regularizer_cosine[i])
            out[f"{prefix}regularizer_norm"] = regularizer_norm
        if self.kkt_residual is not None:
            out[f"{prefix}kkt_residual"] = float(self.kkt_residual)
        out[f"{prefix}direction_norm"] = float(self.direction_norm)
        out[f"{prefix}skipped"] = float(self.skipped)
        return out

    def __repr__(self) -> str:
        if self._host is None:
            return "StepInfo(<on device; read a field to fetch>)"
        fields = [
            f"{name}={self._host[name]!r}" for name in ("weights", "skipped", "direction_norm")
        ]
        if self._host["regularizer"] is not None:
            fields.append(f"regularizer_norm={self.regularizer_norm!r}")
        return f"StepInfo({', '.join(fields)})"
