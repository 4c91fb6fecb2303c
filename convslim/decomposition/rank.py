"""The energy rule: a layer's rank from the cumulative energy of its singular values.

Energy share of component i is s_i^2 / sum_j s_j^2, the same idea as the pruner's information
contribution P_i; keep the largest components until their shares add up to at least `energy`.
"""
import torch

from ..errors import ConvslimError


def check_energy(energy):
    if not (isinstance(energy, (int, float)) and 0 < energy <= 1):
        raise ConvslimError(f"energy must be in (0, 1], got {energy!r}")
    return float(energy)


def energy_rank(singular_values, energy):
    """Smallest r whose r largest singular values hold at least `energy` of the squared total."""
    check_energy(energy)
    s2 = torch.as_tensor(singular_values, dtype=torch.float64).flatten().pow(2).sort(descending=True).values
    total = s2.sum()
    if total <= 0:
        return 1
    cum = s2.cumsum(0) / total
    r = int((cum < energy - 1e-12).sum()) + 1
    return min(r, len(s2))


def unfolding_values(weight, mode):
    """Singular values of the mode-`mode` unfolding of a kernel (mode 0: outputs, 1: inputs)."""
    w = weight.detach().to(torch.float64).movedim(mode, 0)
    return torch.linalg.svdvals(w.reshape(w.shape[0], -1))
