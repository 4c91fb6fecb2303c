"""The fully automatic pruner: the budget search (convslim.budget) over the one cumulative
contribution rate cr, with channel importance computed once and reused by every probe."""
import dataclasses
import time

from ..budget import (SearchConfig, budget_search, finish, on_search_device, recover, search_teacher, task_for,
                      with_defaults)
from ..checkpoint import ensure_record, example_input, record_of
from ..errors import ConvslimError
from ..latency import compare_ms, measure_model
from ..metrics import count
from .latency_aware import LatencySnap
from .progressive import progressive_search, verified_search
from .prune import apply_rule, channel_importance, cr_for_target, kept_per_layer

__all__ = ["SearchConfig", "auto_prune"]

# the pruner's search when none is named: the one that found the most compression within budget in
# benchmarks/RESULTS.md table 8 (auto against the oracle)
DEFAULT_SEARCH = "progressive"
# whether its fine-tunes learn from the original when the caller does not say: in table 8 the searches
# kept as much or more within budget with distillation on every row but one (vgg16@0.5 at the 2-epoch
# final, one seed); about twice as much on resnet20 at the 5-epoch final and on digits width 4
DEFAULT_DISTILL = True


def auto_defaults(cfg):
    """`cfg` as auto_prune runs it: DEFAULT_SEARCH, DEFAULT_DISTILL and that search's probe length
    where `cfg` leaves them None."""
    return with_defaults(cfg, DEFAULT_SEARCH, DEFAULT_DISTILL)


def auto_prune(model, data=None, cfg=None, *, example_input=None, evaluate=None, finetune=None, batches=None,
               test=None, criterion="permutation", options=None, calib_batches=4, importance=None, teacher=None,
               ignored_layers=(), target=None, latency=None, log_path=None, settings=None, model_id="",
               progress=True, echo=print):
    """Search cr, keep the fewest-FLOPs candidate within budget, fine-tune it; returns (model, summary).

    `data` is convslim Splits (validation top-1 judges, convslim's trainer fine-tunes), a Task, or
    your own iterable of batches; `evaluate(model) -> float` (higher is better, the budget
    `cfg.max_acc_loss` is in its units), `finetune(model, epochs)`, `batches` and `test` replace
    the defaults. Every fine-tune (the search's probes or steps, and the final one) distils from
    `teacher`, or from the original unless `cfg.distill` is False (DEFAULT_DISTILL; with your own
    loop, only when the task has a distilling one). `example_input`
    (tensor or shape) is needed for a plain module unless the batches show it.

    `target=("flops" | "params", value)` is the dual mode: no accuracy budget, the least pruned model
    with at most that many FLOPs or params (a value <= 1 is a share of the original's), fine-tuned,
    with the accuracy it reaches. `target=("latency", ms)` does the same on measured time, and needs
    `latency`: a LatencyTable (or several, e.g. batch 1 and 64; the first is the target's) of the
    engine you deploy to; with it every candidate's channel counts also snap to fast counts.
    """
    cfg = auto_defaults((cfg or SearchConfig()).check())
    task = task_for(data, cfg, progress, evaluate=evaluate, finetune=finetune, batches=batches, test=test)
    ensure_record(model, example_input, task.batches if example_input is None else None)
    model = on_search_device(model, data, cfg).eval()
    teacher = search_teacher(model, cfg, teacher)
    task = task.distilling(teacher)
    imp = importance or channel_importance(model, data if data is not None and batches is None else task,
                                           criterion=criterion, calib_batches=calib_batches, options=options,
                                           seed=cfg.seed, ignored_layers=ignored_layers)

    snap = LatencySnap(model, imp.groups, latency) if latency is not None else None

    def make(cr):
        cand, kept = apply_rule(model, imp, "cr", cr, multiple=cfg.multiple, latency=snap)
        return cand, {"channels": kept}

    if target is not None:
        return prune_to_target(model, imp, task, cfg, target, teacher, snap, echo)
    header = {"model": model_id, "criterion": imp.criterion, "options": imp.options}
    if cfg.search in ("progressive", "verified"):
        def score(current):          # the first step reuses the scores given; later ones score the smaller model
            return imp if current is model else channel_importance(
                current, data if data is not None and batches is None else task, criterion=imp.criterion,
                calib_batches=calib_batches, options=options, seed=cfg.seed, ignored_layers=ignored_layers)
        search = progressive_search if cfg.search == "progressive" else verified_search
        return search(model, task, cfg, score, header={**header, "config": dataclasses.asdict(cfg)},
                                  teacher=teacher, log_path=log_path, settings=settings, snap=snap,
                                  progress=progress, echo=echo)
    best, summary, _ = budget_search(model, task, cfg, make, key="cr", header=header, teacher=teacher,
                                     log_path=log_path, progress=progress, echo=echo, settings=settings,
                                     hint=", or --search progressive: it reads each step against the original after "
                                          "the same short fine-tune, which alone can cost a converged model the budget")
    summary.update(channels=kept_per_layer(best), base_channels=kept_per_layer(model))
    return best, summary


def target_count(target, base_counts):
    """(metric, absolute count) from ("flops" | "params", value): a value <= 1 is a share of the base."""
    metric, value = target
    if metric not in ("flops", "params"):
        raise ConvslimError(f"a target is on flops, params or latency, got {metric!r}")
    if not value > 0:
        raise ConvslimError(f"target {metric} must be positive, got {value}")
    return metric, value * base_counts[metric] if value <= 1 else value


def cr_for_latency(model, imp, cfg, snap, goal_ms, echo, step=1 / 32, tries=32):
    """The least pruned cr whose model runs within `goal_ms` on the first table's engine, batch and
    threads. The table's prediction gives a first cr; then whole models are measured, stepping cr
    down while the measurement misses and up while the next step still meets the goal (NetAdapt's
    measured check, started where the table points)."""
    table = snap.tables[0]
    shape = record_of(model).input_shape

    def candidate(cr):
        return apply_rule(model, imp, "cr", cr, multiple=cfg.multiple, latency=snap)[0]

    def measured(cr):
        ms = measure_model(candidate(cr), shape, engine=table.engine, batch=table.batch, threads=table.threads)
        echo(f"latency target {goal_ms:.3f} ms: cr {cr:.4f} measures {ms:.3f} ms")
        return ms

    base_ms = measure_model(model, shape, engine=table.engine, batch=table.batch, threads=table.threads)
    if base_ms <= goal_ms:
        return 1.0
    full = snap.predict_ms(model)
    try:                  # the table predicts the share of the base's time a candidate takes
        cr = cr_for_target(lambda v: base_ms * snap.predict_ms(candidate(v)) / full, goal_ms, what="ms (predicted)")
    except ConvslimError:
        cr = 0.0          # the table sees no way; the measurements have the last word
    if measured(cr) <= goal_ms:
        for _ in range(tries):
            if cr + step >= 1 or measured(cr + step) > goal_ms:
                return cr
            cr += step
        return cr
    for _ in range(tries):
        cr = max(0.0, cr - step)
        if measured(cr) <= goal_ms:
            return cr
        if cr == 0.0:
            break
    raise ConvslimError(f"no pruned model measured {goal_ms:.3f} ms or less on {table.engine} (batch {table.batch}, "
                        f"{table.threads} thread(s)); the base measures {base_ms:.3f} ms")


def fastest_rounding(model, imp, task, cfg, snap, metric, goal, echo=print, multiples=(8, 16)):
    """NetAdapt's measured check for a FLOPs or params target: which way of rounding channel counts
    runs fastest where the model is deployed? Candidates at the target: counts snapped by the
    latency table, and counts rounded up to each of `multiples` (SIMD blocks: 8 floats with AVX2,
    16 with AVX-512). Each is timed whole on every table's engine and batch, alternating with the
    base, and read after BN re-estimation and `cfg.probe_epochs` of fine-tuning. The fastest whose
    reading is within `cfg.max_acc_loss` of the best reading wins: the table sums layers timed
    alone, an engine fuses and pads, so on resnet20 it chose counts slower than multiples of 8
    (RESULTS.md table 7); measured, the choice is never slower than a plain rounding that reads as
    well. Returns (apply_rule keywords, cr, one record per candidate)."""
    x, shape = example_input(model), record_of(model).input_shape
    ways = [("latency table", {"latency": snap, "multiple": cfg.multiple})]
    ways += [(f"multiple {m}", {"multiple": m}) for m in multiples if m > cfg.multiple]
    cands, seen = [], set()
    for name, kw in ways:
        try:
            cr = cr_for_target(lambda v: count(apply_rule(model, imp, "cr", v, **kw)[0], x)[metric], goal, what=metric)
        except ConvslimError:
            continue                                  # this rounding cannot get under the target
        slim, kept = apply_rule(model, imp, "cr", cr, **kw)
        if tuple(sorted(kept.items())) not in seen:   # two roundings that agree are timed once
            seen.add(tuple(sorted(kept.items())))
            cands.append({"rounding": name, "cr": cr, "kw": kw, "model": slim})
    if any(c["cr"] >= 1.0 for c in cands):
        return ways[0][1], 1.0, []                    # the model already meets the target: nothing to time
    speed = [0.0] * len(cands)
    for table in snap.tables:
        base_ms, *ms = compare_ms([model] + [c["model"] for c in cands], shape, engine=table.engine,
                                  batch=table.batch, threads=table.threads)
        for i, c in enumerate(cands):
            c[f"ms_b{table.batch}"] = ms[i]
            speed[i] += base_ms / ms[i] / len(snap.tables)
    for c, s in zip(cands, speed):
        recover(c["model"], task, cfg)
        counts = count(c["model"], x)
        c.update(speedup=s, val_acc=float(task.evaluate(c["model"])), flops=counts["flops"], params=counts["params"])
    best_val = max(c["val_acc"] for c in cands)
    win = max((c for c in cands if c["val_acc"] >= best_val - cfg.max_acc_loss), key=lambda c: c["speedup"])
    for c in cands:
        echo(f"{c['rounding']:<14} cr {c['cr']:.4f}  {c['speedup']:.2f}x faster (measured)  {task.metric} "
             f"{c['val_acc']:.2f} after {cfg.probe_epochs:g} epochs{'  <- chosen' if c is win else ''}")
    records = [{**{k: v for k, v in c.items() if k not in ("kw", "model")}, "chosen": c is win} for c in cands]
    return win["kw"], win["cr"], records


def prune_to_target(model, imp, task, cfg, target, teacher, snap=None, echo=print):
    """The dual mode of auto_prune: the least pruned model under a FLOPs, params or latency target."""
    base_counts = count(model, example_input(model))
    t0 = time.perf_counter()
    kw, candidates = {"multiple": cfg.multiple, "latency": snap}, None
    if target[0] == "latency":
        if snap is None:
            raise ConvslimError("a latency target needs a latency table of the engine you deploy to (latency=...)")
        if not target[1] > 0:
            raise ConvslimError(f"target latency must be positive, got {target[1]}")
        metric, goal = target
        cr = cr_for_latency(model, imp, cfg, snap, goal, echo)
    else:
        metric, goal = target_count(target, base_counts)
        if snap is not None:           # which rounding runs fastest is measured, not predicted
            kw, cr, candidates = fastest_rounding(model, imp, task, cfg, snap, metric, goal, echo)
        else:
            x = example_input(model)
            cr = cr_for_target(lambda v: count(apply_rule(model, imp, "cr", v, multiple=cfg.multiple)[0], x)[metric],
                               goal, what=metric)
    best, kept = apply_rule(model, imp, "cr", cr, **kw)
    recover(best, task, dataclasses.replace(cfg, probe_epochs=0))   # BN statistics only; the final tune follows
    summary = finish(model, best, task, cfg, base_counts, tune=cr < 1.0, teacher=teacher, chosen_cr=cr,
                     target={"metric": metric, "value": goal}, search="target",
                     search_seconds=time.perf_counter() - t0,
                     search_epochs=cfg.probe_epochs * len(candidates) if candidates else 0.0)
    if candidates:
        summary["roundings"] = candidates
    summary.update(channels=kept_per_layer(best), base_channels=kept_per_layer(model))
    return best, summary
