"""The fully automatic pruner: the budget search (convslim.budget) over the one cumulative
contribution rate cr, with channel importance computed once and reused by every probe."""
import dataclasses
import time

from ..budget import SearchConfig, budget_search, finish, on_search_device, recover, task_for
from ..checkpoint import ensure_record, example_input
from ..errors import ConvslimError
from ..metrics import count
from .prune import apply_rule, channel_importance, kept_per_layer

__all__ = ["SearchConfig", "auto_prune"]


def auto_prune(model, data=None, cfg=None, *, example_input=None, evaluate=None, finetune=None, batches=None,
               test=None, criterion="permutation", options=None, calib_batches=4, importance=None, teacher=None,
               ignored_layers=(), target=None, log_path=None, settings=None, model_id="", progress=True,
               echo=print):
    """Search cr, keep the fewest-FLOPs candidate within budget, fine-tune it; returns (model, summary).

    `data` is convslim Splits (validation top-1 judges, convslim's trainer fine-tunes), a Task, or
    your own iterable of batches; `evaluate(model) -> float` (higher is better, the budget
    `cfg.max_acc_loss` is in its units), `finetune(model, epochs)`, `batches` and `test` replace
    the defaults. The final fine-tune distils from `teacher`, or from the original when `cfg.distill`
    (with convslim's trainer). `example_input` (tensor or shape) is needed for a plain module
    unless the batches show it.

    `target=("flops" | "params", value)` is the dual mode: no accuracy budget, the least pruned model
    with at most that many FLOPs or params (a value <= 1 is a share of the original's), fine-tuned,
    with the accuracy it reaches.
    """
    cfg = (cfg or SearchConfig()).check()
    task = task_for(data, cfg, progress, evaluate=evaluate, finetune=finetune, batches=batches, test=test)
    ensure_record(model, example_input, task.batches if example_input is None else None)
    model = on_search_device(model, data, cfg).eval()
    imp = importance or channel_importance(model, data if data is not None and batches is None else task,
                                           criterion=criterion, calib_batches=calib_batches, options=options,
                                           seed=cfg.seed, ignored_layers=ignored_layers)

    def make(cr):
        cand, kept = apply_rule(model, imp, "cr", cr, multiple=cfg.multiple)
        return cand, {"channels": kept}

    if target is not None:
        return prune_to_target(model, imp, task, cfg, target, teacher)
    header = {"model": model_id, "criterion": imp.criterion, "options": imp.options}
    best, summary, _ = budget_search(model, task, cfg, make, key="cr", header=header, teacher=teacher,
                                     log_path=log_path, progress=progress, echo=echo,
                                     settings=settings)
    summary.update(channels=kept_per_layer(best), base_channels=kept_per_layer(model))
    return best, summary


def target_count(target, base_counts):
    """(metric, absolute count) from ("flops" | "params", value): a value <= 1 is a share of the base."""
    metric, value = target
    if metric not in ("flops", "params"):
        raise ConvslimError(f"a target is on flops or params, got {metric!r}")
    if not value > 0:
        raise ConvslimError(f"target {metric} must be positive, got {value}")
    return metric, value * base_counts[metric] if value <= 1 else value


def cr_for_target(model, importance, metric, goal, *, multiple=1, steps=16):
    """The largest cr (the least pruning) whose model has at most `goal` FLOPs or params: counted,
    nothing trained. Counts grow with cr, so a bisection finds it."""
    x = example_input(model)

    def size(cr):
        return count(apply_rule(model, importance, "cr", cr, multiple=multiple)[0], x)[metric]

    if size(1.0) <= goal:
        return 1.0
    smallest = size(0.0)
    if smallest > goal:
        raise ConvslimError(f"no pruned model has {goal:,.0f} {metric} or fewer: the smallest convslim can make "
                            f"keeps one channel per group and has {smallest:,}")
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if size(mid) <= goal else (lo, mid)
    return lo


def prune_to_target(model, imp, task, cfg, target, teacher):
    """The dual mode of auto_prune: the least pruned model under a FLOPs or params target."""
    base_counts = count(model, example_input(model))
    metric, goal = target_count(target, base_counts)
    t0 = time.perf_counter()
    cr = cr_for_target(model, imp, metric, goal, multiple=cfg.multiple)
    best, kept = apply_rule(model, imp, "cr", cr, multiple=cfg.multiple)
    recover(best, task, dataclasses.replace(cfg, probe_epochs=0))   # BN statistics only; the final tune follows
    summary = finish(model, best, task, cfg, base_counts, tune=cr < 1.0, teacher=teacher, chosen_cr=cr,
                     target={"metric": metric, "value": goal}, search="target",
                     search_seconds=time.perf_counter() - t0)
    summary.update(channels=kept_per_layer(best), base_channels=kept_per_layer(model))
    return best, summary
