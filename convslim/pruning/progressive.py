"""Progressive pruning (issue 12): steps that compound, each judged after its own recovery.

The thesis's bisection prunes the original once per probe and judges a copy after a short
fine-tune; a short fine-tune reads a damaged model several points below where its final fine-tune
takes it, so the search stops early. Here each step removes a share of the *current* model's FLOPs
(channel importance scored again on it), the step is recovered (BN statistics, `probe_epochs` of
fine-tuning) and kept when its score is within the budget of the original's; a step that reads
below the budget but better than at its last reading gets another `probe_epochs` (up to
`max_readings` readings), since a larger step needs longer to recover. With a teacher (`--distill`), every step
recovers by distillation from it too. A kept step is the
start of the next, so fine-tuning accumulates as in gradual pruning and every judgement is made on
a model one small step from a recovered one. A step that fails is undone and the step size halved.
The steps together cost at most `final_epochs` (the search may not cost more than the final
fine-tune); the last kept model then gets the final fine-tune.

Each step is one record of the search log; the kept model is saved beside it, so a stopped search
resumes at the step it reached.
"""
import copy
import time

from ..budget import SearchLog, finish, fresh_base, recover
from ..checkpoint import example_input, read, rebuild, save
from ..device import device_of
from ..metrics import count
from .latency_aware import LatencySnap
from .prune import apply_rule, cr_for_target, kept_per_layer


def step_cr(model, imp, share, multiple, snap=None):
    """The cr on `model` whose pruned copy has about (1 - share) of its FLOPs (counted, not trained),
    with channel counts snapped as the step will snap them."""
    x = example_input(model)
    goal = (1 - share) * count(model, x)["flops"]
    return cr_for_target(lambda v: count(apply_rule(model, imp, "cr", v, multiple=multiple, latency=snap)[0], x)["flops"],
                         goal)


def progressive_search(model, task, cfg, score, *, header, teacher=None, log_path=None, settings=None,
                       snap=None, first_share=0.25, min_share=0.02, max_readings=3, progress=True, echo=print):
    """`score(model) -> Importance`; returns (fine-tuned model, summary) like budget_search."""
    t_start = time.perf_counter()
    base_val = float(task.evaluate(model))
    base_counts = count(model, example_input(model))
    log = SearchLog(log_path, {**header, "search": "progressive", "base_val_acc": round(base_val, 6)}, settings)
    current, share, spent = model, first_share, 0.0
    for rec in log.probes:                              # a resumed search: where it had got to
        spent += rec["epochs"]
        share = rec["next_share"]
    if any(r["decision"] == "keep" for r in log.probes) and log.candidate_path and log.candidate_path.exists():
        current = rebuild(read(log.candidate_path), log.candidate_path, model=fresh_base(model)).to(device_of(model))
    elif log.final_state and log.final_state.exists() and not log.probes:
        log.final_state.unlink()
    step_epochs = max(cfg.probe_epochs, 1e-9)
    while share >= min_share and spent + step_epochs <= cfg.final_epochs + 1e-9:
        t0 = time.perf_counter()
        imp = score(current)
        fast = LatencySnap(current, imp.groups, snap.tables) if snap is not None else None   # the current widths
        cr = step_cr(current, imp, share, cfg.multiple, fast)
        cand, kept = apply_rule(current, imp, "cr", cr, multiple=cfg.multiple, latency=fast)
        recover(cand, task, cfg, teacher)
        spent += cfg.probe_epochs
        readings = [float(task.evaluate(cand))]
        # a step that reads below the budget but is still recovering gets more of the same fine-tune
        while (readings[-1] + cfg.max_acc_loss < base_val and len(readings) < max_readings
               and (len(readings) == 1 or readings[-1] > readings[-2])
               and spent + step_epochs <= cfg.final_epochs + 1e-9):
            task.tune(cand, cfg.probe_epochs, teacher)
            spent += cfg.probe_epochs
            readings.append(float(task.evaluate(cand)))
        val = readings[-1]
        counts = count(cand, example_input(cand))
        ok = val + cfg.max_acc_loss >= base_val and counts["flops"] < count(current, example_input(current))["flops"]
        rec = {"probe": len(log.probes) + 1, "kind": "step", "cr": cr, "share": share, "channels": kept,
               "flops": counts["flops"], "params": counts["params"], "val_acc": val, "readings": readings,
               "epochs": cfg.probe_epochs * len(readings), "decision": "keep" if ok else "reject",
               "next_share": share if ok else share / 2, "seconds": time.perf_counter() - t0}
        if ok:
            current = cand
            if log.candidate_path:
                save(cand, log.candidate_path, search={"step": rec["probe"]})
        log.add(rec)
        share = rec["next_share"]
        if progress:
            echo(f"step {rec['probe']}: remove {100 * rec['share']:.1f}% of the current FLOPs (cr {cr:.4f})  "
                 f"{task.metric} {' -> '.join(f'{r:.2f}' for r in readings)} (base {base_val:.2f})  FLOPs -{100 * (1 - counts['flops'] / base_counts['flops']):.1f}%"
                 f"  {rec['decision']}  {rec['seconds']:.1f}s")
    pruned = current is not model
    if not pruned:
        echo("no step stayed within the accuracy budget: nothing is pruned, nothing is fine-tuned; the model is "
             "returned as it came (try a larger --max-acc-loss or longer --probe-epochs)")
        current = copy.deepcopy(model)
    summary = finish(model, current, task, cfg, base_counts, tune=pruned, teacher=teacher, resume=log.final_state,
                     base_val=base_val, search="progressive", probes=len(log.probes), verifications=0,
                     search_seconds=sum(r["seconds"] for r in log.probes), search_epochs=spent,
                     chosen_cr=None, max_acc_loss=cfg.max_acc_loss, log=log.probes)
    summary.update(channels=kept_per_layer(current), base_channels=kept_per_layer(model),
                   seconds_this_run=time.perf_counter() - t_start)
    return current, summary
