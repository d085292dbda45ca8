"""mogd: a Pareto optimizer for multi-objective fine-tuning (GAPO, P-GAPO, MGDA)."""

from mogd.ops import combine, gram
from mogd.solver import MinNormResult, min_norm
from mogd.weighting import GAPO, MGDA, PGAPO, Linear, Weighting, WeightingResult

__all__ = [
    "GAPO",
    "MGDA",
    "PGAPO",
    "Linear",
    "MinNormResult",
    "Weighting",
    "WeightingResult",
    "combine",
    "gram",
    "min_norm",
]
__version__ = "0.1.0"
