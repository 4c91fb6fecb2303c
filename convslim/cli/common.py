"""What every subcommand shares: argument types with their ranges, the model/data/teacher options,
and the one check of every path a command reads or writes (run by `main` before any work)."""
import argparse
import math
import sys
from pathlib import Path

from ..errors import ConvslimError
from ..fileio import check_paths

# Argument names that are files a command reads, files it writes, and folders it writes.
READ_ARGS = ("model", "weights", "teacher", "student", "ratios", "summary")
WRITE_ARGS = ("out", "json", "log", "csr")


# --- argument types: every number gets its range where it enters ---------------------------------

def _number(kind, text):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_range(lo, hi=None):
    """An argparse type for an integer in [lo, hi]."""
    def parse(text):
        value = _number(int, text)
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {f'from {lo} to {hi}' if hi is not None else f'at least {lo}'}, "
                                             f"got {value}")
        return value
    return parse


def float_range(lo=None, hi=None, lo_open=False, hi_open=False):
    """An argparse type for a finite number in the given (half-)open interval."""
    def parse(text):
        value = _number(float, text)
        low_bad = lo is not None and (value <= lo if lo_open else value < lo)
        high_bad = hi is not None and (value >= hi if hi_open else value > hi)
        if low_bad or high_bad:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            span = f"{left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"
            raise argparse.ArgumentTypeError(f"must be in {span}, got {text}")
        return value
    return parse


positive_int = int_range(1)
non_negative = float_range(0)
positive = float_range(0, lo_open=True)
fraction = float_range(0, 1)


def batches(text):
    try:
        values = [int(t) for t in text.split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes, got {text!r}")
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("batch sizes must be at least 1")
    return values


# --- model, data, teacher --------------------------------------------------------------------------

def add_model_args(p, required=True):
    p.add_argument("--model", required=required,
                   help="zoo name (resnet20), a saved .pt, file.py:factory or package.module:factory")
    p.add_argument("--weights", help="state dict (or convslim .pt) to load into a zoo or factory model")
    p.add_argument("--width", type=positive, default=1.0, help="width multiplier for a zoo model")
    p.add_argument("--num-classes", type=int_range(2), help="classes (default: from --data, else 10)")
    p.add_argument("--in-channels", type=positive_int, help="input channels (default: from --data, else 3)")
    p.add_argument("--input-size", type=int_range(8), help="input height and width when no --data is given (default 32)")
    p.add_argument("--output", help="when forward returns a tuple, list or dict: the index or key of the logits")


def add_data_args(p, required=False, default=None):
    p.add_argument("--data", required=required, default=default,
                   help="digits | cifar10:PATH | cifar100:PATH | imagefolder:PATH")
    p.add_argument("--val-fraction", type=float_range(0, 1, hi_open=True), default=0.1,
                   help="share of train held out for validation")
    p.add_argument("--resize", type=int_range(8), help="resize imagefolder images to this square size")
    p.add_argument("--seed", type=int_range(0), default=0, help="seed for the split, shuffling and init")


def is_saved(spec):
    return spec.endswith(".pt")


def open_model(args, splits=None):
    """The model named by --model; a new one takes its shape from the data when there is data.
    Its initial weights are drawn after the seed is set, so the same seed gives the same model."""
    import torch

    from ..modelspec import resolve

    if is_saved(args.model) and args.weights:
        raise ConvslimError("--weights applies to a zoo or factory model, not to a saved .pt")
    if args.model.endswith(".csz"):
        raise ConvslimError(f"{args.model} is a coded (.csz) model; decode it first: "
                            f"convslim decompress --model {args.model} --out model.pt")
    if splits is not None:
        shape = list(splits.input_shape)
        classes = args.num_classes or splits.num_classes
    else:
        size = args.input_size or 32
        shape = [args.in_channels or 3, size, size]
        classes = args.num_classes or 10
    torch.manual_seed(getattr(args, "seed", 0))
    model = resolve(args.model, num_classes=classes, in_channels=shape[0], width=args.width,
                    input_shape=shape, weights=args.weights, output=getattr(args, "output", None))
    if not is_saved(args.model) and not args.weights and args.command not in ("train", "profile", "compare",
                                                                              "distill"):
        print(f"convslim: warning: {args.model} has random weights (no --weights): figures are those of an "
              f"untrained model", file=sys.stderr)
    return model


def open_data(args, model=None):
    from ..data import load_data
    from ..session import data_for

    if model is not None:
        splits = data_for(model, args.data, val_fraction=args.val_fraction, seed=args.seed, resize=args.resize)
    else:
        splits = load_data(args.data, val_fraction=args.val_fraction, seed=args.seed, resize=args.resize)
    if splits.num_classes < 2:
        raise ConvslimError(f"data {args.data} has {splits.num_classes} class; a classifier needs at least 2")
    return splits


def open_model_and_data(args):
    """A saved model brings its own shape and normalisation; a new one takes its shape from the data.
    A saved model that records its data needs no --data."""
    if is_saved(args.model):
        from ..checkpoint import record_of

        model = open_model(args)
        if getattr(args, "data", None) is None:
            args.data = record_of(model).meta.get("data")
            if not args.data:
                raise ConvslimError(f"{args.model} does not record its data; pass --data")
        return model, open_data(args, model)
    if getattr(args, "data", None) is None:
        raise ConvslimError("--data is required unless --model is a saved .pt that records its data")
    splits = open_data(args)
    return open_model(args, splits), splits


def open_teacher(args, model=None):
    """--teacher: a saved model to distil from, or 'original' (a copy of the model as it came)."""
    teacher = getattr(args, "teacher", None)
    if not teacher:
        return None
    if teacher == "original" and model is not None:
        import copy
        return copy.deepcopy(model).eval()
    if not is_saved(teacher):
        raise ConvslimError(f"--teacher must be a saved .pt{' or original' if model is not None else ''}, "
                            f"got {teacher!r}")
    from ..checkpoint import load
    return load(teacher)


# --- paths ---------------------------------------------------------------------------------------

def _path_part(spec):
    """The file inside a --model or --data spec: file.py:factory, cifar10:PATH, or a plain path."""
    if spec is None:
        return None
    head, sep, tail = str(spec).partition(":")
    if sep and head.endswith(".py"):
        return head
    if sep and head in ("cifar10", "cifar100", "imagefolder"):
        return tail
    return spec


def check_command_paths(args):
    """Every path this command reads or writes, checked against every other before work starts."""
    if hasattr(args, "log") and not args.log and getattr(args, "out", None):
        args.log = f"{args.out}.search.json"
    folder_args = getattr(args, "folder_args", ("report",))
    reads = [_path_part(getattr(args, name, None)) for name in READ_ARGS]
    reads.append(_path_part(getattr(args, "data", None)))
    writes = [getattr(args, name, None) for name in WRITE_ARGS if name not in folder_args]
    folders = [getattr(args, name, None) for name in folder_args]
    check_paths(reads=[r for r in reads if r and Path(r).exists()], writes=writes, folders=folders)


def output_suffix(path, suffixes, what="--out"):
    if Path(path).suffix not in suffixes:
        raise ConvslimError(f"{what} must end in {' or '.join(suffixes)}, got {Path(path).name}")
