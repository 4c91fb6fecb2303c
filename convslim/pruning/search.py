"""The fully automatic pruner: the budget search (convslim.search) over the one cumulative
contribution rate cr, with channel importance computed once and reused by every probe."""
from ..distributed import pick_device
from ..search import SearchConfig, budget_search
from .prune import apply_rule, channel_importance, kept_per_layer

__all__ = ["SearchConfig", "auto_prune"]


def auto_prune(model, splits, cfg=None, *, criterion="permutation", options=None, calib_batches=4,
               importance=None, teacher=None, log_path=None, model_id="", progress=True, echo=print):
    """Search cr, keep the fewest-FLOPs candidate within budget, fine-tune it; returns (model, summary).

    The final fine-tune distils from `teacher`, or from the original model when `cfg.distill`.
    """
    cfg = (cfg or SearchConfig()).check()
    model = model.to(pick_device(cfg.device)).eval()   # scored, pruned and fine-tuned on cfg.device
    imp = importance or channel_importance(model, splits, criterion=criterion, calib_batches=calib_batches,
                                           options=options, seed=cfg.seed)

    def make(cr):
        cand, kept = apply_rule(model, imp, "cr", cr, multiple=cfg.multiple)
        return cand, {"channels": kept}

    header = {"model": model_id, "criterion": imp.criterion, "options": imp.options}
    best, summary, _ = budget_search(model, splits, cfg, make, key="cr", header=header, teacher=teacher,
                                     log_path=log_path, progress=progress, echo=echo)
    summary.update(channels=kept_per_layer(best), base_channels=kept_per_layer(model))
    return best, summary
