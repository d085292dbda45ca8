"""mogd: a Pareto optimizer for multi-objective fine-tuning (GAPO, P-GAPO, MGDA)."""

from mogd.ops import combine, gram
from mogd.optimizer import MOGD, StepInfo
from mogd.solver import MinNormResult, min_norm
from mogd.weighting import GAPO, MGDA, PGAPO, Linear, Weighting, WeightingResult

__all__ = [
    "GAPO",
    "MGDA",
    "MOGD",
    "PGAPO",
    "Linear",
    "MinNormResult",
    "StepInfo",
    "Weighting",
    "WeightingResult",
    "combine",
    "gram",
    "min_norm",
]
__version__ = "0.1.0"
