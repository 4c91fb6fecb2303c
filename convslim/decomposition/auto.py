"""Automatic decomposition (DESIGN.md 1.3 applied to low rank): binary search over the one energy
threshold against an accuracy budget, a short fine-tune per probe.

Reuses the pruner's SearchConfig, probe recovery, resumable JSON log and Task protocol: the same
loop with energy in place of the cumulative contribution rate.
"""
from ..budget import SearchConfig, budget_search, on_search_device, task_for
from ..checkpoint import ensure_record
from .model import decompose


def auto_decompose(model, data=None, method="tucker", cfg=None, *, example_input=None, evaluate=None,
                   finetune=None, batches=None, test=None, layers=None, log_path=None, settings=None,
                   model_id="", progress=True, echo=print):
    """Search the energy, keep the fewest-FLOPs candidate within budget, fine-tune it; returns
    (model, summary). `data` and the callables are those of `convslim.auto_prune`."""
    cfg = (cfg or SearchConfig()).check()
    task = task_for(data, cfg, progress, evaluate=evaluate, finetune=finetune, batches=batches, test=test)
    ensure_record(model, example_input, task.batches if example_input is None else None)
    model = on_search_device(model, data, cfg).eval()

    def make(energy):
        cand, rows = decompose(model, method, energy, layers=layers)
        return cand, {"layers": rows}

    best, summary, best_rec = budget_search(model, task, cfg, make, key="energy",
                                            header={"model": model_id, "method": method, "layers": layers},
                                            log_path=log_path, progress=progress, echo=echo,
                                            settings=settings)
    summary.update(method=method, layers=best_rec["layers"] if best_rec else [])
    return best, summary
