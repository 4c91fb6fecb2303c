"""Iterative pruning: raise the sparsity in steps, fine-tuning with masks held after each step
(prune -> fine-tune -> prune more, as in Han et al. 2015), so the network adapts gradually.

Targets follow Zhu & Gupta's cubic schedule s_i = s (1 - (1 - i/n)^3) (large steps first, small
ones near the end) or a linear one.
"""
import copy
import time
from dataclasses import asdict, dataclass

from ..distributed import pick_device
from ..errors import ConvslimError
from ..data import Splits
from ..task import Task, as_task
from ..train import evaluate as evaluate_split
from .magnitude import SCOPES, keep_masks, magnitude_masks, sparsity_table


@dataclass
class SparsifyConfig:
    sparsity: float = 0.9
    scope: str = "global"            # global | layer
    steps: int = 3                   # prune/fine-tune rounds (1 = one shot)
    schedule: str = "cubic"          # cubic | linear
    epochs_per_step: float = 1.0     # fine-tune after each step (0: prune only)
    final_epochs: float = 0.0        # extra fine-tune at the final sparsity
    lr: float = 0.01
    batch_size: int = 128
    distill: bool = False            # fine-tunes learn from the dense original (KD)
    exclude: tuple = ()              # layer names left dense
    seed: int = 0
    device: str = "auto"

    def check(self):
        if not 0 <= self.sparsity < 1:
            raise ConvslimError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.scope not in SCOPES:
            raise ConvslimError(f"unknown scope {self.scope!r}; choose global or layer")
        if self.steps < 1:
            raise ConvslimError(f"steps must be at least 1, got {self.steps}")
        if self.schedule not in ("cubic", "linear"):
            raise ConvslimError(f"unknown schedule {self.schedule!r}; choose cubic or linear")
        if self.epochs_per_step < 0 or self.final_epochs < 0:
            raise ConvslimError("fine-tune epochs must be non-negative")
        return self


def targets(cfg):
    """The sparsity reached after each step; the last is cfg.sparsity."""
    n = cfg.steps
    if cfg.schedule == "linear":
        return [cfg.sparsity * i / n for i in range(1, n + 1)]
    return [cfg.sparsity * (1 - (1 - i / n) ** 3) for i in range(1, n + 1)]


def sparsify(model, data=None, cfg=None, *, evaluate=None, finetune=None, progress=True, echo=print):
    """A sparse copy of `model` (masks applied and held through fine-tuning); returns
    (model, masks, summary).

    `data` is convslim Splits (validation top-1 scores each step; both models end on cfg.device),
    a Task, or your own batches with `evaluate(model) -> float` and `finetune(model, epochs)`: the
    masks are held while your loop trains. Without data it prunes once at the final sparsity,
    where the model is."""
    cfg = (cfg or SparsifyConfig()).check()
    own = data is not None and not isinstance(data, Splits)
    task = as_task(data, evaluate=evaluate, finetune=finetune) if own else None
    device = pick_device(cfg.device) if data is not None and not own else None
    dense = model.eval()
    sparse = copy.deepcopy(dense)
    steps = targets(cfg) if data is not None else [cfg.sparsity]
    teacher = copy.deepcopy(dense) if cfg.distill and data is not None else None

    def score(m):
        if data is None:
            return None
        return float(task.evaluate(m)) if own else evaluate_split(m, data, "val", device=device)["top1"]

    def tune(m, epochs, step):
        if own:
            task.tune(m, epochs, teacher)
        elif data is not None:
            Task.from_splits(data, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed + step, device=cfg.device,
                             progress=progress).tune(m, epochs, teacher)

    base_val = score(dense)
    log, masks = [], {}
    for i, target in enumerate(steps, 1):
        t0 = time.perf_counter()
        masks = magnitude_masks(sparse, target, cfg.scope, exclude=cfg.exclude)
        epochs = cfg.epochs_per_step + (cfg.final_epochs if i == len(steps) else 0)
        with keep_masks(sparse, masks):
            tune(sparse, epochs, i)
        sparse.eval()
        rec = {"step": i, "target": target, "sparsity": sparsity_table(sparse, cfg.exclude)[1],
               "seconds": time.perf_counter() - t0}
        if data is not None:
            rec["val_acc"] = score(sparse)
        log.append(rec)
        if progress:
            tail = f", val {rec['val_acc']:.2f} (dense {base_val:.2f})" if data is not None else ""
            echo(f"step {i}/{len(steps)}: sparsity {rec['sparsity']:.3f}{tail}, {rec['seconds']:.1f}s")
    rows, total = sparsity_table(sparse, cfg.exclude)
    summary = {"config": asdict(cfg), "steps": log, "layers": rows, "sparsity": total, "base_val_acc": base_val}
    return sparse, masks, summary
