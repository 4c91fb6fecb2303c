"""The one-dimensional budget search (seed 003 chapter 4; DESIGN.md 1.3), shared by every family
that compresses along one knob in [0, 1] where smaller means smaller: the pruner's cumulative
contribution rate cr, decomposition's energy.

    base = accuracy(model, val)
    l, r = 0, 1
    while r - l > min_interval:
        v = (l + r) / 2; cand = recover(make(v))       # BN statistics re-estimated, short fine-tune
        if accuracy(cand, val) + max_acc_loss >= base: keep, r = v   else: l = v
    result = the kept candidate with the fewest FLOPs, fine-tuned with the full budget

Every probe is appended to a JSON log; the candidate with the fewest FLOPs so far is saved beside
it, so an interrupted search resumes from the log instead of starting over.
"""
import copy
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .checkpoint import example_input, new_model, read, rebuild, record_of, save
from .device import device_of
from .distributed import pick_device
from .errors import ConvslimError
from .fileio import write_text_atomic
from .metrics import count
from .task import as_task
from .train import TrainConfig, recalibrate_bn


SEARCHES = ("thesis", "calibrated", "progressive", "verified")


@dataclass
class SearchConfig:
    max_acc_loss: float = 1.0      # accepted validation accuracy loss, percentage points
    min_interval: float = 0.01     # stop when the search interval is this narrow
    probe_epochs: float = None     # fine-tune per probe after BN re-estimation; None: the search's own
                                   # (PROBE_EPOCHS, CALIBRATED_PROBE_EPOCHS)
    bn_batches: int = 20           # batches for BatchNorm statistics re-estimation
    final_epochs: float = 10.0     # fine-tune of the chosen candidate
    lr: float = 0.01               # fine-tuning learning rate (probes and final)
    batch_size: int = 128
    distill: bool = None           # the search's fine-tunes and the final one learn from the original (KD);
                                   # None: the method's own default (auto_prune: on, RESULTS.md table 8; decomposition: off)
    multiple: int = 1              # round channel counts up to a multiple (hardware)
    search: str = None             # thesis | calibrated | progressive | verified (README); None: the method's
                                   # own default (auto_prune: progressive, RESULTS.md table 8; decomposition: thesis)
    verify_epochs: float = None    # calibrated: fine-tune per verification (default final_epochs / 4)
    seed: int = 0
    device: str = "auto"

    def check(self):
        if not (math.isfinite(self.max_acc_loss) and 0 <= self.max_acc_loss < 100):
            raise ConvslimError(f"max-acc-loss must be in [0, 100) percentage points, got {self.max_acc_loss}")
        if not (0 < self.min_interval < 1):
            raise ConvslimError(f"min-interval must be in (0, 1), got {self.min_interval}")
        if (self.probe_epochs is not None and self.probe_epochs < 0) or self.final_epochs < 0:
            raise ConvslimError("probe and final epochs must be non-negative")
        if self.multiple < 1:
            raise ConvslimError(f"channel multiple must be at least 1, got {self.multiple}")
        if self.search is not None and self.search not in SEARCHES:
            raise ConvslimError(f"unknown search {self.search!r}; choose one of {', '.join(SEARCHES)}")
        if self.verify_epochs is not None and not self.verify_epochs > 0:
            raise ConvslimError(f"verify epochs must be positive, got {self.verify_epochs}")
        return self

    @property
    def probes(self):
        return math.ceil(math.log2(1 / self.min_interval))

    def train_config(self, epochs, progress=False):
        return TrainConfig(epochs=epochs, lr=self.lr, batch_size=self.batch_size, seed=self.seed,
                           device=self.device, progress=progress)


PROBE_EPOCHS = 0.5             # a probe's or step's fine-tune when none is given (RESULTS.md tables 6 and 8)
CALIBRATED_PROBE_EPOCHS = 0.2  # the calibrated search's: it was measured with these (table 8), and a short
                               # probe leaves epochs for the verifications that judge it


def with_defaults(cfg, search, distill):
    """`cfg` with the fields left None filled in for a method whose own defaults are `search` and
    `distill` (auto_prune and the decomposition search differ), and the probe length that search uses."""
    search = cfg.search or search
    probe = cfg.probe_epochs if cfg.probe_epochs is not None else (
        CALIBRATED_PROBE_EPOCHS if search == "calibrated" else PROBE_EPOCHS)
    return replace(cfg, search=search, distill=distill if cfg.distill is None else cfg.distill, probe_epochs=probe)


def recover(model, task, cfg, teacher=None):
    """Make a probe judgeable: re-estimate BN statistics, then the task's short fine-tune (distilling
    from `teacher` when given)."""
    recalibrate_bn(model, task.bn_data if task.bn_data is not None else task.batches, batches=cfg.bn_batches,
                   batch_size=cfg.batch_size, seed=cfg.seed, device=device_of(model))
    task.tune(model, cfg.probe_epochs, teacher)
    return model


class SearchLog:
    """The JSON search log: header (what is searched, settings, base accuracy) and the probes."""

    def __init__(self, path, header, settings=None):
        self.path = Path(path) if path else None
        self.data = {"header": header, "settings": settings, "probes": []}
        if self.path and self.path.exists():
            try:
                old = json.loads(self.path.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise ConvslimError(f"{self.path} is not a search log (not JSON); remove it or choose "
                                    f"another --log") from None
            if not isinstance(old, dict) or not isinstance(old.get("probes"), list):
                raise ConvslimError(f"{self.path} is not a search log; remove it or choose another --log")
            if old.get("header") != header:
                raise ConvslimError(f"search log {self.path} belongs to another run (different model or "
                                    f"settings); remove it or choose another --log")
            self.data = {**old, "settings": settings}   # the settings of the run that wrote last

    @property
    def probes(self):
        return self.data["probes"]

    def add(self, record):
        self.probes.append(record)
        if self.path:
            write_text_atomic(self.path, json.dumps(self.data, indent=2))

    @property
    def final_state(self):
        """Where the final fine-tune saves its state each epoch, so a stop there resumes too."""
        return self.path.with_name(self.path.name + ".final-state.pt") if self.path else None

    @property
    def candidate_path(self):
        return self.path.with_name(self.path.name + ".candidate.pt") if self.path else None


def flops_params(a, b):
    """FLOPs and params of base and result, and the reductions in percent (the thesis's columns)."""
    return {"base_flops": a["flops"], "flops": b["flops"], "base_params": a["params"], "params": b["params"],
            "flops_reduction": 100 * (1 - b["flops"] / a["flops"]),
            "params_reduction": 100 * (1 - b["params"] / a["params"])}


def budget_search(model, task, cfg, make, *, key, header, teacher=None, log_path=None, progress=True,
                  echo=print, settings=None, hint=""):
    """Search `key` in [0, 1] with `make(value) -> (candidate, record fields)`, judged by
    `task.evaluate` (any metric, higher is better; the budget is in its units); returns
    (fine-tuned best model, summary, the chosen record or None). `cfg.search` picks the strategy
    (`thesis`: plain bisection on probe readings; `calibrated`: see `calibrated_search`).
    `settings` (the command's resolved options) is kept in the log so the run can be repeated; `hint`
    ends the line printed when nothing is kept (what else the caller offers)."""
    cfg = with_defaults(cfg.check(), "thesis", False)
    teacher = search_teacher(model, cfg, teacher)
    task = task_for(task, cfg).distilling(teacher)
    t_start = time.perf_counter()
    model = model.eval()
    base_val = float(task.evaluate(model))
    log = SearchLog(log_path, {**header, "config": asdict(cfg), "base_val_acc": round(base_val, 6)}, settings)
    base_counts = count(model, example_input(model))
    if log.probes:
        echo(f"resuming from {log_path}: {len(log.probes)} record(s) done")
    elif log.final_state and log.final_state.exists():
        log.final_state.unlink()          # a fresh search: a final fine-tune state left here is another run's
    done = {(r.get("kind", "probe"), r[key]): r for r in log.probes}
    fresh = {}                       # value -> the recovered candidate of a probe made in this run

    def probe(value):
        """A candidate at `value`, BN re-estimated and briefly fine-tuned, scored (cached in the log)."""
        if ("probe", value) in done:
            return done[("probe", value)]
        t0 = time.perf_counter()
        cand, fields = make(value)
        recover(cand, task, cfg)
        val = float(task.evaluate(cand))
        counts = count(cand, example_input(cand))
        rec = {"probe": len(log.probes) + 1, "kind": "probe", key: value, **fields, "flops": counts["flops"],
               "params": counts["params"], "val_acc": val, "epochs": cfg.probe_epochs,
               "seconds": time.perf_counter() - t0}
        fresh[value] = cand
        done[("probe", value)] = rec
        return rec

    def say(rec):
        """One line per logged record, printed once it is in the log."""
        if not progress:
            return
        what = (f"probe {rec['probe']}: {key} {rec[key]:.4f}" if rec["kind"] == "probe" else
                f"verify: {key} {rec[key]:.4f} after {rec['epochs']:g} epochs (probe read {rec['probe_val']:.2f}; "
                f"predicted loss after the final fine-tune {rec.get('predicted_final_damage', float('nan')):.2f})")
        echo(f"{what}  {task.metric} {rec['val_acc']:.2f} (base {base_val:.2f})  "
             f"FLOPs -{100 * (1 - rec['flops'] / base_counts['flops']):.1f}%  {rec['decision']}  {rec['seconds']:.1f}s")

    def candidate(value):
        """The probe's candidate itself when made in this run, else made again (the same, seeded)."""
        if value in fresh:
            return fresh.pop(value)
        return recover(make(value)[0], task, cfg)

    strategies = {"thesis": thesis_search, "calibrated": calibrated_search}
    if cfg.search not in strategies:
        raise ConvslimError(f"the {cfg.search} search is the pruner's own (auto_prune); this search takes "
                            f"{' or '.join(strategies)}")
    strategy = strategies[cfg.search]
    chosen = strategy(probe, candidate, task, cfg, log, key, base_val, done, say)
    best = None
    if chosen is not None and log.candidate_path and log.candidate_path.exists() and not chosen.get("_fresh"):
        best = rebuild(read(log.candidate_path), log.candidate_path, model=fresh_base(model)).to(device_of(model))
    elif chosen is not None:
        best = chosen.pop("_model")
    chosen = {k: v for k, v in chosen.items() if not k.startswith("_")} if chosen else None
    if best is None:
        echo("no probe stayed within the accuracy budget: nothing is pruned, nothing is fine-tuned; "
             f"the model is returned as it came (try a larger --max-acc-loss or longer --probe-epochs{hint})")
        best = copy.deepcopy(model)
    search_epochs = sum(r.get("epochs", cfg.probe_epochs) for r in log.probes)
    summary = finish(model, best, task, cfg, base_counts, tune=chosen is not None, teacher=teacher,
                     resume=log.final_state,
                     base_val=base_val, search=cfg.search,
                     probes=sum(r.get("kind", "probe") == "probe" for r in log.probes),
                     verifications=sum(r.get("kind") == "verify" for r in log.probes),
                     search_seconds=sum(r["seconds"] for r in log.probes), search_epochs=search_epochs,
                     **{f"chosen_{key}": chosen[key] if chosen else 1.0}, max_acc_loss=cfg.max_acc_loss,
                     log=log.probes)
    summary["seconds_this_run"] = time.perf_counter() - t_start
    return best, summary, chosen


def search_teacher(model, cfg, teacher=None):
    """Whom a search's fine-tunes learn from: `teacher`, or with cfg.distill (`--distill`) a frozen
    copy of the original, for the probes or steps as for the final fine-tune."""
    return teacher if teacher is not None or not cfg.distill else copy.deepcopy(model).eval()


def finish(model, best, task, cfg, base_counts, *, tune, teacher=None, base_val=None, resume=None, **fields):
    """The chosen model's final fine-tune (distilling from `teacher`, or from the original when
    cfg.distill; resumable from `resume` with convslim's trainer) and the figures every automatic
    result reports: scores before and after, test figures when the task has them, FLOPs and params
    and their reductions, epochs and seconds."""
    t_final = time.perf_counter()
    teacher = search_teacher(model, cfg, teacher)
    if tune:
        task.tune(best, cfg.final_epochs, teacher, resume=resume)
        if resume is not None and Path(resume).exists():
            Path(resume).unlink()         # finished: nothing left to resume
    best.eval()
    base_val = float(task.evaluate(model)) if base_val is None else base_val
    summary = {"metric": task.metric, "base_val_acc": base_val, "final_val_acc": float(task.evaluate(best)),
               "final_seconds": time.perf_counter() - t_final, "final_epochs": cfg.final_epochs if tune else 0,
               "pruned": tune, **fields}
    summary["epochs"] = summary.get("search_epochs", 0) + summary["final_epochs"]
    if fields.get("max_acc_loss") is not None:    # a search judged candidates before their final fine-tune
        summary["within_budget"] = summary["base_val_acc"] - summary["final_val_acc"] <= fields["max_acc_loss"] + 1e-9
    if task.test is not None:
        summary.update(base_test_acc=float(task.test(model)), test_acc=float(task.test(best)))
    summary.update(flops_params(base_counts, count(best, example_input(best))))
    return summary


def _keep(log, rec, cand, key, decision, say):
    """Log a decided record; a kept candidate is saved beside the log so a resumed run finds it."""
    rec["decision"] = decision
    if decision == "keep" and cand is not None and log.candidate_path:
        save(cand, log.candidate_path, search={key: rec[key]})
    log.add(rec)
    say(rec)


def thesis_search(probe, candidate, task, cfg, log, key, base_val, done, say):
    """The thesis's bisection: keep a probe when its reading is within the budget of the base;
    the kept candidate with the smallest value is chosen (its probe-recovered state)."""
    lo, hi, best = 0.0, 1.0, None
    for rec in log.probes:                                    # a resumed run: the bisection so far
        lo, hi = (lo, rec[key]) if rec["decision"] == "keep" else (rec[key], hi)
        best = rec if rec["decision"] == "keep" and (best is None or rec["flops"] < best["flops"]) else best
    while hi - lo > cfg.min_interval + 1e-12:
        value = (lo + hi) / 2
        rec = probe(value)
        ok = rec["val_acc"] + cfg.max_acc_loss >= base_val
        if ok:
            hi = value
            if best is None or rec["flops"] < best["flops"]:
                cand = candidate(value)
                _keep(log, rec, cand, key, "keep", say)
                best = {**rec, "_model": cand, "_fresh": True}
                continue
        else:
            lo = value
        _keep(log, rec, None, key, "keep" if ok else "reject", say)
    return best


RATIO_PRIOR = 0.5      # calibrated: the first verification lands where a probe read about twice the budget
RATIO_STEP = 0.5       # calibrated: one verification may at most halve the ratio (a probe may then read twice as far down)


def final_damage(probe_damage, probe_epochs, verify_damage, verify_epochs, final_epochs):
    """The damage left after the final fine-tune, extrapolated from two readings of one candidate: a
    power law in the epochs it has been fine-tuned, damage ~ t^-b, fitted through the probe's reading
    (t = probe_epochs) and the verification's (t = probe + verify epochs), carried on to the end of the
    final fine-tune that continues the verified candidate. Returns (damage, b). No fall between the
    readings (b <= 0) predicts no further fall. Not safe on hard cuts: on three CIFAR-10 candidates
    it overstated what a 5-epoch fine-tune leaves by 0.16-0.27 points, but it understated by 0.54 the
    damage a kept vgg16@0.5 candidate ended with (README, the calibrated search): a power law falls
    to zero, a pruned model's damage levels off above it."""
    if verify_damage <= 0:
        return max(verify_damage, 0.0), None
    if probe_epochs <= 0 or probe_damage <= verify_damage:
        return verify_damage, 0.0
    t_verify = probe_epochs + verify_epochs
    b = math.log(probe_damage / verify_damage) / math.log(t_verify / probe_epochs)
    return verify_damage * ((t_verify + final_epochs) / t_verify) ** -b, b


def verification_epochs(cfg):
    """The calibrated search's fine-tune per verification: `cfg.verify_epochs`, else a quarter of the
    final fine-tune (two verifications and their probes fit the search's epoch budget), never less
    than a probe."""
    return cfg.verify_epochs if cfg.verify_epochs is not None else max(cfg.final_epochs / 4, cfg.probe_epochs)


def calibrated_search(probe, candidate, task, cfg, log, key, base_val, done, say):
    """Bisection on probe readings, judged by the damage predicted after the final fine-tune (issue 12).

    A short probe overstates the damage the final fine-tune leaves, the more so the harder the cut
    (vgg16@0.5: a 5-epoch fine-tune left 0.96 of a 0.6-point probe damage and 0.43 of a 4.9-point one;
    RESULTS.md table 8), so neither the probe's reading nor one additive gap says where to stop. Here a
    probe passes when ratio * (base - reading) <= budget, and the most compressed passing candidate is
    fine-tuned for `verify_epochs` and read again (a verification). Its two readings give its damage
    after the final fine-tune (`final_damage`, a power law in the epochs), and it is kept when that is
    within budget; the last kept one is the answer. Every verification, kept or not, sets the ratio to
    its predicted final damage over its probe damage (at most 1, and at least RATIO_STEP of the ratio
    before: how far down a probe may read grows step by step, as the verifications bear it out), and
    the next bisection, reusing every reading made, moves to a harder cut after a kept one and a milder
    one after a failed one. The first ratio is RATIO_PRIOR, so the first verification lands where a
    probe read about twice the budget: there a reading falls measurably, where a milder one sits in the
    validation's noise (on digits one image is 0.28 points). When no reading passes at first, the
    mildest candidate read is verified. It stops when the bisection lands on a candidate already verified or no more compressed
    than the answer, or when one more verification would make the search cost more epochs than the
    final fine-tune; a probe is only read while a verification can still follow it. The answer keeps
    its verification fine-tune."""
    verify_epochs = verification_epochs(cfg)
    ratio, best, seen = RATIO_PRIOR, None, set()

    def spent():
        return sum(r.get("epochs", cfg.probe_epochs) for r in log.probes)

    while True:
        threshold = base_val - cfg.max_acc_loss / ratio
        lo, hi = 0.0, 1.0
        while hi - lo > cfg.min_interval + 1e-12:
            value = (lo + hi) / 2
            if ("probe", value) not in done and spent() + cfg.probe_epochs + verify_epochs > cfg.final_epochs + 1e-9:
                break                                          # no epochs left for a reading and its verification
            rec = probe(value)
            if "decision" not in rec:
                _keep(log, rec, None, key, "read", say)
            lo, hi = (lo, value) if rec["val_acc"] >= threshold else (value, hi)
        if hi >= 1.0:       # nothing passes yet: learn the ratio at the mildest candidate read so far
            read = [v for kind, v in done if kind == "probe"]
            if not read:
                break
            hi = max(read)
        if hi in seen or (best is not None and hi >= best[key]):
            break                                              # nothing new or more compressed to try
        seen.add(hi)
        v = done.get(("verify", hi))
        if v is None:
            if spent() + verify_epochs > cfg.final_epochs + 1e-9:
                break                                          # the search may not cost more than the final fine-tune
            t0 = time.perf_counter()
            cand = candidate(hi)
            task.tune(cand, verify_epochs)
            score = float(task.evaluate(cand))
            reading = done[("probe", hi)]
            probe_damage = base_val - reading["val_acc"]
            predicted, b = final_damage(probe_damage, cfg.probe_epochs, base_val - score, verify_epochs,
                                        cfg.final_epochs)
            v = {"probe": len(log.probes) + 1, "kind": "verify", key: hi, "flops": reading["flops"],
                 "params": reading["params"], "val_acc": score, "probe_val": reading["val_acc"],
                 "predicted_final_damage": predicted, "exponent": b,
                 "ratio": min(max(predicted / probe_damage, RATIO_STEP * ratio), 1.0) if probe_damage > 0 else None,
                 "epochs": verify_epochs, "threshold": threshold, "seconds": time.perf_counter() - t0}
            done[("verify", hi)] = v
            _keep(log, v, cand, key, "keep" if predicted <= cfg.max_acc_loss else "reject", say)
            if v["decision"] == "keep":
                best = {**v, "_model": cand, "_fresh": True}
        elif v["decision"] == "keep":
            best = v
        if v.get("ratio") is None:
            break                                              # the probe read no damage: nothing to learn
        ratio = v["ratio"]
    return best


def task_for(data, cfg, progress=False, **callables):
    """The Task a search runs on: convslim Splits with cfg's fine-tuning settings (a progress bar
    on every fine-tune when `progress`), or the user's."""
    return as_task(data, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed, device=cfg.device, progress=progress,
                   **callables)


def on_search_device(model, data, cfg):
    """convslim's own data runs the search on cfg.device; a user's task leaves the model where it is."""
    from .data import Splits

    return model.to(pick_device(cfg.device)) if isinstance(data, Splits) else model


def fresh_base(model):
    """The unpruned base of `model`, for replaying a saved candidate's full history onto: the model
    itself (copied) when nothing was removed from it yet, else rebuilt from its architecture."""
    rec = record_of(model)
    if not rec.history and not rec.edits:
        return copy.deepcopy(model)
    a = rec.arch
    return new_model(a["model"], num_classes=a["num_classes"], in_channels=a["in_channels"], width=a["width"],
                     input_shape=rec.input_shape, output=a.get("output"), check=False).to(device_of(model))
