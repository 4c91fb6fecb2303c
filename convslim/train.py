"""Training, fine-tuning and evaluation loops; unchanged under torchrun (DDP).

The recipe is the usual strong CIFAR one: SGD with Nesterov momentum, weight decay (not on
BatchNorm or biases), cosine or one-cycle schedule, optional label smoothing, batched crop/flip
done on tensors, channels_last on CPU. Fine-tuning inside the pruner uses the same `fit` with a
step budget, and a pluggable loss so distillation can slot in.
"""
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import distributed as dist
from .batches import take_batches
from .data import Splits
from .errors import ConvslimError

LOG_EVERY = 10   # steps between progress-bar updates (each one waits for the device)


@dataclass
class TrainConfig:
    epochs: float = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"          # cosine | onecycle | constant
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"
    channels_last: bool = True        # applied on CPU, where it speeds up convs
    max_steps: int = 0                # >0 caps the number of optimiser steps (short fine-tunes)
    progress: bool = True
    amp: bool = False                 # bf16 autocast for forward and loss (fast on recent GPUs)

    def check(self):
        if not (self.epochs >= 0 and math.isfinite(self.epochs)):
            raise ConvslimError(f"epochs must be a non-negative number, got {self.epochs}")
        if self.batch_size < 1:
            raise ConvslimError(f"batch size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConvslimError(f"learning rate must be positive, got {self.lr}")
        if self.schedule not in ("cosine", "onecycle", "constant"):
            raise ConvslimError(f"unknown schedule {self.schedule!r} (cosine, onecycle, constant)")
        if not 0 <= self.label_smoothing < 1:
            raise ConvslimError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        return self


def cross_entropy(label_smoothing=0.0):
    def loss_fn(model, x, y):
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits
    return loss_fn


def _param_groups(model, weight_decay):
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _schedule(cfg, optimizer, total_steps):
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(total_steps, 1))
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / max(total_steps, 1))))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def _channels_last_safe(model):
    """torch 2.13's one-thread CPU backward of a strided 1x1 conv in channels_last corrupts the heap
    when the conv has fewer than 7 input channels, which heavily pruned shortcuts do."""
    return not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
                   and m.in_channels < 8 for m in model.modules())


def _memory_format(cfg, device, model):
    use = cfg.channels_last and device.type == "cpu" and _channels_last_safe(model)
    return torch.channels_last if use else torch.contiguous_format


class OwnBatches:
    """A user's iterable of (input, target) batches (a DataLoader) as fit's loader: moved to the
    device, epochs passed on to a sampler that wants them (DistributedSampler)."""

    def __init__(self, batches, device, memory_format=torch.contiguous_format):
        from .batches import split_batch

        self.batches, self.device, self.fmt, self.split = batches, device, memory_format, split_batch

    def __len__(self):
        return len(self.batches)

    def set_epoch(self, epoch):
        sampler = getattr(self.batches, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def __iter__(self):
        for batch in self.batches:
            x, y = self.split(batch)
            if y is None:
                raise ConvslimError("training needs (input, target) batches; got inputs without targets")
            x = x.to(self.device)
            yield (x.contiguous(memory_format=self.fmt) if x.dim() == 4 else x), y.to(self.device)


def fit(model, splits, cfg=None, *, loss_fn=None, validate=True, resume=None):
    """Train `model` in place on convslim Splits' train part, or on any iterable of (input, target)
    batches with a length (your DataLoader: then `cfg.batch_size` is the loader's business and
    nothing is validated); returns per-epoch figures and timing.

    Timing separates the time spent waiting for a batch (loading, augmenting) from the time in
    forward, backward and the optimiser step, so the data overhead is measured, not guessed.
    With `resume` (a path), the weights, optimizer, schedule, RNG and log are saved there after every
    epoch, and a run that finds the file continues from it: a run stopped and resumed ends with the
    same weights, bit for bit, as one that never stopped.
    """
    cfg = (cfg or TrainConfig()).check()
    device = dist.pick_device(cfg.device)
    rank, world = dist.setup(device)
    torch.manual_seed(cfg.seed)
    fmt = _memory_format(cfg, device, model)
    model.to(device=device, memory_format=fmt)
    net = dist.wrap(model, device)
    loss_fn = loss_fn or cross_entropy(cfg.label_smoothing)
    if isinstance(splits, Splits):
        loader = splits.loader("train", cfg.batch_size, seed=cfg.seed, device=device, drop_last=True,
                               rank=rank, world_size=world, channels_last=fmt is torch.channels_last)
    else:
        loader, validate = OwnBatches(splits, device, fmt), False
    if len(loader) == 0:
        raise ConvslimError(f"the training split has fewer images than one batch ({cfg.batch_size} per process)")
    steps_per_epoch = len(loader)
    total = math.ceil(cfg.epochs * steps_per_epoch)
    if cfg.max_steps:
        total = min(total, cfg.max_steps) if total else cfg.max_steps
    optimizer = torch.optim.SGD(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    scheduler = _schedule(cfg, optimizer, total)
    history, step, epoch = [], 0, 0
    wait_s = compute_s = 0.0
    if resume is not None and Path(resume).exists():
        history, step, epoch = _restore(resume, cfg, model, optimizer, scheduler)
        if dist.is_main():
            print(f"resuming from {resume}: {epoch} epoch(s), {step} of {total} steps done", file=sys.stderr)
    while step < total:
        loader.set_epoch(epoch)
        net.train()
        # loss*n and correct accumulate on the device: no host sync per step, only per epoch
        # and, with a visible progress bar, every LOG_EVERY steps
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        seen = 0
        bar = tqdm(total=min(steps_per_epoch, total - step), desc=f"epoch {epoch + 1}", leave=False,
                   disable=None if cfg.progress and dist.is_main() else True, unit="batch")
        t_epoch = t_last = time.perf_counter()
        for x, y in loader:
            t_got = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                loss, logits = loss_fn(net, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            n = y.numel()
            sums += torch.stack([loss.detach().double() * n, (logits.argmax(1) == y).sum().double()])
            seen += n
            t_done = time.perf_counter()
            wait_s += t_got - t_last
            compute_s += t_done - t_got
            t_last = t_done
            step += 1
            bar.update()
            if not bar.disable and (step % LOG_EVERY == 0 or bar.n == bar.total):
                loss_sum, correct = sums.tolist()
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}",
                                img_s=f"{world * seen / (t_done - t_epoch):.0f}")
            if step >= total:
                break
        bar.close()
        totals = [*sums.tolist(), seen]   # waits for the device, so the epoch's time is all in
        seconds = time.perf_counter() - t_epoch
        loss_sum, correct, n = dist.sum_across(totals, device)
        record = {"epoch": epoch + 1, "steps": step, "train_loss": loss_sum / n,
                  "train_acc": 100 * correct / n, "train_images_per_s": n / seconds, "seconds": seconds}
        if validate and splits.val_y.numel():
            val = evaluate(model, splits, "val", batch_size=max(cfg.batch_size, 256), device=device)
            record.update(val_acc=val["top1"], val_loss=val["loss"])
        history.append(record)
        if cfg.progress and dist.is_main():
            tail = f", val {record['val_acc']:.2f}%" if "val_acc" in record else ""
            tqdm.write(f"epoch {epoch + 1}: loss {record['train_loss']:.4f}, train {record['train_acc']:.2f}%"
                       f"{tail}, {record['train_images_per_s']:.0f} img/s, {seconds:.1f}s")
        epoch += 1
        if resume is not None and dist.is_main():
            _checkpoint(resume, cfg, model, optimizer, scheduler, history, step, epoch)
    model.to(memory_format=torch.contiguous_format)
    overhead = wait_s / max(wait_s + compute_s, 1e-12)
    return {"config": asdict(cfg), "epochs": history, "steps": step, "world_size": world,
            "data_overhead": overhead, "seconds": sum(r["seconds"] for r in history)}


RESUMABLE = ("epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "schedule", "label_smoothing",
             "seed", "max_steps")   # what must match for a saved run to be continued


def _checkpoint(path, cfg, model, optimizer, scheduler, history, step, epoch):
    from .fileio import torch_save_atomic

    torch_save_atomic({"format": "convslim-train-state/1", "config": {k: getattr(cfg, k) for k in RESUMABLE},
                       "model": {k: v.detach().cpu() for k, v in getattr(model, "module", model).state_dict().items()},
                       "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "rng": torch.get_rng_state(), "history": history, "step": step, "epoch": epoch}, path)


def _restore(path, cfg, model, optimizer, scheduler):
    from .checkpoint import load_safely

    state = load_safely(path, "training state")
    if not isinstance(state, dict) or state.get("format") != "convslim-train-state/1":
        raise ConvslimError(f"{path} is not a convslim training state; remove it or train without --resume")
    wanted = {k: getattr(cfg, k) for k in RESUMABLE}
    if state["config"] != wanted:
        diff = next(k for k in wanted if state["config"].get(k) != wanted[k])
        raise ConvslimError(f"{path} belongs to another run ({diff} was {state['config'].get(diff)!r}, "
                            f"now {wanted[diff]!r}); remove it or keep the settings")
    getattr(model, "module", model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return state["history"], state["step"], state["epoch"]


@torch.no_grad()
def evaluate(model, splits, split="test", *, batch_size=256, device=None, limit=None, progress=False):
    """Top-1, top-5 and loss on a split; under torchrun each process scores a shard, counts summed."""
    device = device or dist.pick_device("auto")
    rank, world = dist.rank(), dist.world_size()
    model.to(device).eval()
    loader = splits.loader(split, batch_size, shuffle=False, augment=False, device=device,
                           rank=rank, world_size=world, limit=limit, even=False)
    sums = torch.zeros(3, dtype=torch.float64, device=device)   # loss, top-1, top-5: one sync at the end
    seen = 0
    k = min(5, splits.num_classes)
    t0 = time.perf_counter()
    for x, y in tqdm(loader, desc=f"eval {split}", leave=False, disable=not (progress and dist.is_main())):
        logits = model(x)
        top = logits.topk(k, dim=1).indices
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                             (top[:, 0] == y).sum().double(), (top == y[:, None]).any(1).sum().double()])
        seen += y.numel()
    totals = [*sums.tolist(), seen]
    seconds = time.perf_counter() - t0
    loss, top1, top5, n = dist.sum_across(totals, device)
    if n == 0:
        raise ConvslimError(f"the {split} split is empty")
    return {"split": split, "top1": 100 * top1 / n, "top5": 100 * top5 / n, "loss": loss / n,
            "images": int(n), "images_per_s": n / max(seconds, 1e-12)}


@torch.no_grad()
def recalibrate_bn(model, data, *, batches=20, batch_size=128, device=None, seed=0):
    """Re-estimate BatchNorm running statistics after surgery (cumulative average, no grads), from
    convslim Splits (augmented training batches) or the first `batches` of any iterable of inputs
    or (input, target) pairs."""
    from .data import Splits

    device = device or dist.pick_device("auto")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    if isinstance(data, Splits):
        inputs = (x for x, _ in data.loader("train", batch_size, seed=seed, device=device, limit=batches * batch_size))
    else:
        inputs = iter(take_batches(data, batches, device)[0])
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.to(device).train()
    try:
        for x in inputs:
            model(x)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
    return model.eval()
