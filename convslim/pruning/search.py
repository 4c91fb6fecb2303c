"""The fully automatic search (seed 003 chapter 4; DESIGN.md 1.3): binary search over the one
cumulative contribution rate cr against an accuracy budget on the validation split.

Every probe is appended to a JSON log; the candidate with the fewest FLOPs so far is saved beside
it, so an interrupted search resumes from the log instead of starting over.
"""
import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..checkpoint import example_input, load, save
from ..distill import kd_loss_fn
from ..errors import ConvslimError
from ..fileio import write_text_atomic
from ..metrics import count
from ..train import TrainConfig, evaluate, fit, recalibrate_bn
from .prune import apply_rule, channel_importance, kept_per_layer


@dataclass
class SearchConfig:
    max_acc_loss: float = 1.0      # accepted validation accuracy loss, percentage points
    min_interval: float = 0.01     # stop when the cr interval is this narrow
    probe_epochs: float = 1.0      # short fine-tune of each probe after BN re-estimation
    bn_batches: int = 20           # batches for BatchNorm statistics re-estimation
    final_epochs: float = 10.0     # fine-tune of the chosen candidate
    lr: float = 0.01               # fine-tuning learning rate (probes and final)
    batch_size: int = 128
    distill: bool = False          # final fine-tune learns from the original model (KD)
    multiple: int = 1              # round channel counts up to a multiple (hardware)
    seed: int = 0
    device: str = "auto"

    def check(self):
        if not (math.isfinite(self.max_acc_loss) and 0 <= self.max_acc_loss < 100):
            raise ConvslimError(f"max-acc-loss must be in [0, 100) percentage points, got {self.max_acc_loss}")
        if not (0 < self.min_interval < 1):
            raise ConvslimError(f"min-interval must be in (0, 1), got {self.min_interval}")
        if self.probe_epochs < 0 or self.final_epochs < 0:
            raise ConvslimError("probe and final epochs must be non-negative")
        if self.multiple < 1:
            raise ConvslimError(f"channel multiple must be at least 1, got {self.multiple}")
        return self

    @property
    def probes(self):
        return math.ceil(math.log2(1 / self.min_interval))


def _train_cfg(cfg, epochs, progress):
    return TrainConfig(epochs=epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
                       device=cfg.device, progress=progress)


def recover(model, splits, cfg, progress=False):
    """Make a probe judgeable: re-estimate BN statistics, then a short fine-tune."""
    recalibrate_bn(model, splits, batches=cfg.bn_batches, batch_size=cfg.batch_size, seed=cfg.seed)
    if cfg.probe_epochs > 0:
        fit(model, splits, _train_cfg(cfg, cfg.probe_epochs, progress), validate=False)
    return model


class SearchLog:
    """The JSON search log: header (config, base accuracy) and one record per probe."""

    def __init__(self, path, header):
        self.path = Path(path) if path else None
        self.data = {"header": header, "probes": []}
        if self.path and self.path.exists():
            old = json.loads(self.path.read_text())
            if old.get("header") != header:
                raise ConvslimError(f"search log {self.path} belongs to another run (different model or "
                                    f"settings); remove it or choose another --log")
            self.data = old

    @property
    def probes(self):
        return self.data["probes"]

    def add(self, record):
        self.probes.append(record)
        self.write()

    def write(self):
        if self.path:
            write_text_atomic(self.path, json.dumps(self.data, indent=2))

    @property
    def candidate_path(self):
        return self.path.with_name(self.path.name + ".candidate.pt") if self.path else None


def auto_prune(model, splits, cfg=None, *, criterion="permutation", options=None, calib_batches=4,
               importance=None, teacher=None, log_path=None, model_id="", progress=True, echo=print):
    """Search cr, keep the fewest-FLOPs candidate within budget, fine-tune it; returns (model, summary).

    Channel importance is computed once (or passed in as `importance`) and reused by every probe.
    The final fine-tune distils from `teacher`, or from the original model when `cfg.distill`.
    """
    cfg = (cfg or SearchConfig()).check()
    t_start = time.perf_counter()
    model = model.cpu().eval()
    base_val = evaluate(model, splits, "val")["top1"]
    imp = importance or channel_importance(model, splits, criterion=criterion, calib_batches=calib_batches,
                                           options=options, seed=cfg.seed)
    header = {"model": model_id, "config": asdict(cfg), "criterion": imp.criterion, "options": imp.options,
              "base_val_acc": round(base_val, 6)}
    log = SearchLog(log_path, header)
    base_counts = count(model, example_input(model))
    lo, hi = 0.0, 1.0
    best, best_flops = None, math.inf
    if log.probes:
        echo(f"resuming from {log_path}: {len(log.probes)} probe(s) done")
        for rec in log.probes:
            lo, hi = (lo, rec["cr"]) if rec["decision"] == "keep" else (rec["cr"], hi)
        kept = [r for r in log.probes if r["decision"] == "keep"]
        if kept and log.candidate_path.exists():
            best = load(log.candidate_path)
            best_flops = min(r["flops"] for r in kept)
    while hi - lo > cfg.min_interval + 1e-12:
        cr = (lo + hi) / 2
        t0 = time.perf_counter()
        cand, kept = apply_rule(model, imp, "cr", cr, multiple=cfg.multiple)
        recover(cand, splits, cfg)
        val = evaluate(cand, splits, "val")["top1"]
        counts = count(cand, example_input(cand))
        ok = val + cfg.max_acc_loss >= base_val
        rec = {"probe": len(log.probes) + 1, "cr": cr, "channels": kept, "flops": counts["flops"],
               "params": counts["params"], "val_acc": val, "decision": "keep" if ok else "reject",
               "seconds": time.perf_counter() - t0}
        if ok:
            hi = cr
            if counts["flops"] < best_flops:
                best, best_flops = cand, counts["flops"]
                if log.candidate_path:
                    save(best, log.candidate_path, search={"cr": cr})
        else:
            lo = cr
        log.add(rec)
        if progress:
            echo(f"probe {rec['probe']}: cr {cr:.4f}  val {val:.2f}% (base {base_val:.2f}%)  "
                 f"FLOPs -{100 * (1 - counts['flops'] / base_counts['flops']):.1f}%  {rec['decision']}  "
                 f"{rec['seconds']:.1f}s")
    search_seconds = sum(r["seconds"] for r in log.probes)
    if best is None:
        echo("no probe stayed within the accuracy budget: the model is returned unpruned")
        best = copy.deepcopy(model)
    t_final = time.perf_counter()
    teacher = teacher if teacher is not None else (copy.deepcopy(model) if cfg.distill else None)
    loss_fn = kd_loss_fn(teacher) if teacher is not None else None
    if cfg.final_epochs > 0:
        fit(best, splits, _train_cfg(cfg, cfg.final_epochs, progress), loss_fn=loss_fn, validate=False)
    final_seconds = time.perf_counter() - t_final
    best.eval()
    summary = {
        "base_val_acc": base_val, "final_val_acc": evaluate(best, splits, "val")["top1"],
        "base_test_acc": evaluate(model, splits, "test")["top1"], "test_acc": evaluate(best, splits, "test")["top1"],
        "probes": len(log.probes), "search_seconds": search_seconds, "final_seconds": final_seconds,
        "epochs": len(log.probes) * cfg.probe_epochs + cfg.final_epochs,
        "seconds_this_run": time.perf_counter() - t_start,
        "chosen_cr": min((r["cr"] for r in log.probes if r["decision"] == "keep"), default=1.0),
        "channels": kept_per_layer(best), "base_channels": kept_per_layer(model),
        "log": log.probes,
    }
    summary.update(flops_params(base_counts, count(best, example_input(best))))
    return best, summary


def flops_params(a, b):
    return {"base_flops": a["flops"], "flops": b["flops"], "base_params": a["params"], "params": b["params"],
            "flops_reduction": 100 * (1 - b["flops"] / a["flops"]),
            "params_reduction": 100 * (1 - b["params"] / a["params"])}
