"""The fully automatic pruner: the budget search (convslim.budget) over the one cumulative
contribution rate cr, with channel importance computed once and reused by every probe."""
from ..budget import SearchConfig, budget_search, on_search_device, task_for
from ..checkpoint import ensure_record
from .prune import apply_rule, channel_importance, kept_per_layer

__all__ = ["SearchConfig", "auto_prune"]


def auto_prune(model, data=None, cfg=None, *, example_input=None, evaluate=None, finetune=None, batches=None,
               test=None, criterion="permutation", options=None, calib_batches=4, importance=None, teacher=None,
               ignored_layers=(), log_path=None, settings=None, model_id="", progress=True, echo=print):
    """Search cr, keep the fewest-FLOPs candidate within budget, fine-tune it; returns (model, summary).

    `data` is convslim Splits (validation top-1 judges, convslim's trainer fine-tunes), a Task, or
    your own iterable of batches; `evaluate(model) -> float` (higher is better, the budget
    `cfg.max_acc_loss` is in its units), `finetune(model, epochs)`, `batches` and `test` replace
    the defaults. The final fine-tune distils from `teacher`, or from the original when `cfg.distill`
    (with convslim's trainer). `example_input` (tensor or shape) is needed for a plain module
    unless the batches show it.
    """
    cfg = (cfg or SearchConfig()).check()
    task = task_for(data, cfg, evaluate=evaluate, finetune=finetune, batches=batches, test=test)
    ensure_record(model, example_input, task.batches if example_input is None else None)
    model = on_search_device(model, data, cfg).eval()
    imp = importance or channel_importance(model, data if data is not None and batches is None else task,
                                           criterion=criterion, calib_batches=calib_batches, options=options,
                                           seed=cfg.seed, ignored_layers=ignored_layers)

    def make(cr):
        cand, kept = apply_rule(model, imp, "cr", cr, multiple=cfg.multiple)
        return cand, {"channels": kept}

    header = {"model": model_id, "criterion": imp.criterion, "options": imp.options}
    best, summary, _ = budget_search(model, task, cfg, make, key="cr", header=header, teacher=teacher,
                                     log_path=log_path, progress=progress, echo=echo,
                                     settings=settings)
    summary.update(channels=kept_per_layer(best), base_channels=kept_per_layer(model))
    return best, summary
