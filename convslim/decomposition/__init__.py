"""Low-rank decomposition (seed 000 section 2, seed 002 section 1.5): truncated SVD of linear and
conv layers, Tucker-2 and CP of conv kernels (tensorly), ranks by cumulative energy, and the
pruner's automatic search over that energy.

    slim, rows = decompose(model, "cp", energy=0.9)          # a copy; `convslim.save` keeps it
    slim, summary = auto_decompose(model, splits, "tucker", SearchConfig(max_acc_loss=1.0))
"""
from .model import METHODS, LowRank, decompose, plan
from .rank import energy_rank
from .auto import auto_decompose

__all__ = ["METHODS", "LowRank", "auto_decompose", "decompose", "energy_rank", "plan"]
