"""Automatic decomposition (DESIGN.md 1.3 applied to low rank): binary search over the one energy
threshold against an accuracy budget on the validation split, a short fine-tune per probe.

Reuses the pruner's SearchConfig, probe recovery and resumable JSON log: the same loop with
energy in place of the cumulative contribution rate.
"""
import copy
import math
import time
from dataclasses import asdict

from ..checkpoint import example_input, load, save
from ..distill import kd_loss_fn
from ..metrics import count
from ..pruning.search import SearchConfig, SearchLog, flops_params, recover
from ..train import TrainConfig, evaluate, fit
from .model import decompose


def auto_decompose(model, splits, method="tucker", cfg=None, *, layers=None, log_path=None, model_id="",
                   progress=True, echo=print):
    """Search the energy, keep the fewest-FLOPs candidate within budget, fine-tune it; returns
    (model, summary)."""
    cfg = (cfg or SearchConfig()).check()
    t_start = time.perf_counter()
    model = model.cpu().eval()
    base_val = evaluate(model, splits, "val")["top1"]
    header = {"model": model_id, "method": method, "layers": layers, "config": asdict(cfg),
              "base_val_acc": round(base_val, 6)}
    log = SearchLog(log_path, header)
    base_counts = count(model, example_input(model))
    lo, hi, best, best_flops, best_rows = 0.0, 1.0, None, math.inf, []
    if log.probes:
        echo(f"resuming from {log_path}: {len(log.probes)} probe(s) done")
        for rec in log.probes:
            lo, hi = (lo, rec["energy"]) if rec["decision"] == "keep" else (rec["energy"], hi)
        kept = [r for r in log.probes if r["decision"] == "keep"]
        if kept and log.candidate_path.exists():
            best, best_flops = load(log.candidate_path), min(r["flops"] for r in kept)
            best_rows = min(kept, key=lambda r: r["flops"])["layers"]
    while hi - lo > cfg.min_interval + 1e-12:
        energy = (lo + hi) / 2
        t0 = time.perf_counter()
        cand, rows = decompose(model, method, energy, layers=layers)
        recover(cand, splits, cfg)
        val = evaluate(cand, splits, "val")["top1"]
        counts = count(cand, example_input(cand))
        ok = val + cfg.max_acc_loss >= base_val
        rec = {"probe": len(log.probes) + 1, "energy": energy, "flops": counts["flops"],
               "params": counts["params"], "val_acc": val, "decision": "keep" if ok else "reject",
               "layers": rows, "seconds": time.perf_counter() - t0}
        if ok:
            hi = energy
            if counts["flops"] < best_flops:
                best, best_flops, best_rows = cand, counts["flops"], rows
                if log.candidate_path:
                    save(best, log.candidate_path, search={"energy": energy})
        else:
            lo = energy
        log.add(rec)
        if progress:
            echo(f"probe {rec['probe']}: energy {energy:.4f}  val {val:.2f}% (base {base_val:.2f}%)  "
                 f"FLOPs -{100 * (1 - counts['flops'] / base_counts['flops']):.1f}%  {rec['decision']}  "
                 f"{rec['seconds']:.1f}s")
    if best is None:
        echo("no probe stayed within the accuracy budget: the model is returned undecomposed")
        best = copy.deepcopy(model)
    t_final = time.perf_counter()
    if cfg.final_epochs > 0:
        loss_fn = kd_loss_fn(copy.deepcopy(model)) if cfg.distill else None
        fit(best, splits, TrainConfig(epochs=cfg.final_epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                                      seed=cfg.seed, device=cfg.device, progress=progress),
            loss_fn=loss_fn, validate=False)
    best = best.cpu().eval()
    summary = {"method": method, "base_val_acc": base_val, "final_val_acc": evaluate(best, splits, "val")["top1"],
               "base_test_acc": evaluate(model, splits, "test")["top1"],
               "test_acc": evaluate(best, splits, "test")["top1"],
               "chosen_energy": min((r["energy"] for r in log.probes if r["decision"] == "keep"), default=1.0),
               "probes": len(log.probes), "search_seconds": sum(r["seconds"] for r in log.probes),
               "final_seconds": time.perf_counter() - t_final, "seconds_this_run": time.perf_counter() - t_start,
               "layers": best_rows, "log": log.probes}
    summary.update(flops_params(base_counts, count(best, example_input(best))))
    return best, summary
