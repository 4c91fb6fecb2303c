"""The protocol every compressor speaks: what it needs of the user's world, and nothing more.

- a plain `nn.Module` and an example input (a tensor, or a shape such as (3, 64, 64));
- `batches`: any iterable of inputs, or of (input, target, ...) tuples: a DataLoader, a list;
  used for importance scoring, BatchNorm re-estimation and quantization calibration;
- `finetune(model, epochs)`: any callable that trains the model in place;
- `evaluate(model) -> float`: any metric, higher is better (top-1, mAP, mIoU).

convslim's own data (`Splits`) and trainer are one implementation of it, `Task.from_splits`, used
by the CLI; a user's loader, loop and metric are another, and the searches cannot tell them apart.

    task = convslim.Task(evaluate=my_miou, batches=train_loader, finetune=my_train)
    slim, summary = convslim.auto_prune(model, task, example_input=torch.randn(1, 3, 128, 128))
"""
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Optional

from .distributed import pick_device
from .errors import ConvslimError
from .kd import kd_loss_fn
from .train import TrainConfig, evaluate as evaluate_split, fit


@dataclass
class Task:
    """A model's world as the compressors see it (see the module docstring)."""

    evaluate: Callable                       # model -> float, higher is better; judges every decision
    batches: Optional[Iterable] = None       # inputs or (input, target) pairs
    finetune: Optional[Callable] = None      # (model, epochs) -> anything; trains in place
    test: Optional[Callable] = None          # model -> float, reported only (a held-out test split)
    metric: str = "score"                    # the name of what evaluate returns, for tables
    teacher_finetune: Optional[Callable] = None   # (model, epochs, teacher) -> distilling fine-tune
    bn_data: object = None                   # what BatchNorm re-estimation reads (default: batches)

    def tune(self, model, epochs, teacher=None, resume=None):
        """Fine-tune with the task's loop; with a teacher, its distilling loop when it has one.
        `resume` (a path) makes convslim's own trainer save its state every epoch and continue from
        it; a user's loop is called as it is."""
        if epochs <= 0:
            return None
        own = getattr(self.finetune, "resumable", False)
        extra = {"resume": resume} if resume is not None and own else {}
        if teacher is not None and self.teacher_finetune is not None:
            return self.teacher_finetune(model, epochs, teacher, **extra)
        if self.finetune is None:
            raise ConvslimError("this step fine-tunes, but no finetune(model, epochs) was given; pass one "
                                "(or 0 epochs)")
        return self.finetune(model, epochs, **extra)

    def distilling(self, teacher):
        """This task with every fine-tune distilling from `teacher`: what `--distill` means to a
        search (its probes or steps, and the final fine-tune). Itself without a teacher or without a
        distilling loop."""
        if teacher is None or self.teacher_finetune is None:
            return self
        kd = self.teacher_finetune

        def finetune(model, epochs, resume=None):
            return kd(model, epochs, teacher, **({"resume": resume} if resume is not None else {}))

        finetune.resumable = getattr(self.finetune, "resumable", False)
        return replace(self, finetune=finetune)

    @classmethod
    def from_splits(cls, splits, *, lr=0.01, batch_size=128, seed=0, device="auto", progress=False,
                    calib_batch_size=64, **train_options):
        """convslim's own data and trainer behind the protocol: validation top-1 judges, the test
        split is reported, the trainer fine-tunes (distilling when given a teacher). `train_options`
        are further TrainConfig fields (weight_decay, ...).

        The one place "fine-tune, with distillation when a teacher is given" is written: the CLI's
        fine-tunes and the families' call `Task.from_splits(...).tune(model, epochs, teacher)`."""

        device = pick_device(device)        # scores run where the fine-tunes do, never on another device
        finetune, distil = trainer(splits, lr=lr, batch_size=batch_size, seed=seed, device=str(device),
                                   progress=progress, **train_options)
        return cls(evaluate=lambda m: evaluate_split(m, splits, "val", device=device)["top1"],
                   test=lambda m: evaluate_split(m, splits, "test", device=device)["top1"],
                   batches=SplitBatches(splits, calib_batch_size, seed), finetune=finetune,
                   teacher_finetune=distil, metric="top-1 %", bn_data=splits)


def trainer(data, **train_options):
    """convslim's trainer as the protocol's callables, on convslim Splits or your own DataLoader of
    (input, target) batches: (finetune(model, epochs), distil(model, epochs, teacher)). Settings
    are TrainConfig fields (lr, weight_decay, seed, device, ...).

        task = convslim.Task(evaluate=my_metric, batches=loader, finetune=convslim.trainer(loader, lr=0.01)[0])
    """
    def config(epochs):
        return TrainConfig(epochs=epochs, **train_options)

    def finetune(model, epochs, resume=None):
        return fit(model, data, config(epochs), validate=False, resume=resume)

    def distil(model, epochs, teacher, resume=None):
        return fit(model, data, config(epochs), validate=False, loss_fn=kd_loss_fn(teacher), resume=resume)

    finetune.resumable = True
    return finetune, distil


class SplitBatches:
    """Labelled, un-augmented, shuffled training batches of a `Splits` (never validation or test);
    iterable again and again, the same batches each time."""

    def __init__(self, splits, batch_size=64, seed=0):
        self.splits, self.batch_size, self.seed = splits, batch_size, seed
        self.input_shape = splits.input_shape

    def __iter__(self):
        return iter(self.splits.loader("train", self.batch_size, shuffle=True, augment=False, seed=self.seed))


def as_task(data, *, evaluate=None, batches=None, finetune=None, test=None, **split_options):
    """A Task from what the caller has: a Task, convslim `Splits`, or a plain iterable of batches,
    with any of the callables given explicitly taking precedence."""
    from .data import Splits

    if isinstance(data, Task):
        task = data
    elif isinstance(data, Splits):
        task = Task.from_splits(data, **split_options)
    else:
        if evaluate is None:
            raise ConvslimError("give evaluate(model) -> float (higher is better): it judges every decision; "
                                "or pass convslim Splits, whose validation top-1 is the default")
        task = Task(evaluate=evaluate, batches=data)
    overrides = {k: v for k, v in dict(evaluate=evaluate, batches=batches, finetune=finetune, test=test).items()
                 if v is not None}
    if overrides:
        task = Task(**{**task.__dict__, **overrides})
        if "finetune" in overrides:
            task.teacher_finetune = None
    return task
