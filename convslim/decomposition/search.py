"""Automatic decomposition (DESIGN.md 1.3 applied to low rank): binary search over the one energy
threshold against an accuracy budget on the validation split, a short fine-tune per probe.

Reuses the pruner's SearchConfig, probe recovery and resumable JSON log: the same loop with
energy in place of the cumulative contribution rate.
"""
from ..distributed import pick_device
from ..search import SearchConfig, budget_search
from .model import decompose


def auto_decompose(model, splits, method="tucker", cfg=None, *, layers=None, log_path=None, model_id="",
                   progress=True, echo=print):
    """Search the energy, keep the fewest-FLOPs candidate within budget, fine-tune it; returns
    (model, summary)."""
    cfg = (cfg or SearchConfig()).check()
    model = model.to(pick_device(cfg.device)).eval()   # decomposed and fine-tuned on cfg.device

    def make(energy):
        cand, rows = decompose(model, method, energy, layers=layers)
        return cand, {"layers": rows}

    best, summary, best_rec = budget_search(model, splits, cfg, make, key="energy",
                                            header={"model": model_id, "method": method, "layers": layers},
                                            log_path=log_path, progress=progress, echo=echo)
    summary.update(method=method, layers=best_rec["layers"] if best_rec else [])
    return best, summary
