"""What every subcommand shares: argument types with their ranges, the model/data/teacher options,
and the one check of every path a command reads or writes (run by `main` before any work)."""
import argparse
import json
import math
import sys
from pathlib import Path

from ..errors import ConvslimError
from ..fileio import check_paths, write_text_atomic

# Argument names that are files a command reads, files it writes, and folders it writes.
READ_ARGS = ("model", "weights", "teacher", "student", "ratios", "summary", "config")
WRITE_ARGS = ("out", "json", "log", "csr", "state", "plot")


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
    def per_channel(text):
        try:
            return [float(t) for t in text.replace(",", " ").split()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, one per channel, got {text!r}")

    p.add_argument("--data", required=required, default=default,
                   help="digits | cifar10[:PATH] | cifar100[:PATH] (no PATH: download) | imagefolder:PATH | "
                        "file.py:factory (your own data)")
    p.add_argument("--val-fraction", type=float_range(0, 1, hi_open=True), default=0.1,
                   help="share of train held out for validation")
    p.add_argument("--resize", type=int_range(8), help="resize imagefolder images to this square size")
    p.add_argument("--seed", type=int_range(0), default=0, help="seed for the split, shuffling and init")
    p.add_argument("--mean", type=per_channel, metavar="M1,M2,M3",
                   help="normalisation mean per channel, in [0, 1] units (what your weights were trained with; "
                        "default: the training images' own, or what a saved model records)")
    p.add_argument("--std", type=per_channel, metavar="S1,S2,S3", help="normalisation std per channel, as --mean")


def is_saved(spec):
    return spec.endswith(".pt")


def open_model(args, splits=None, *, spec=None):
    """The model named by --model (or `spec`, e.g. distill's --teacher and --student); a new one takes
    its shape from the data when there is data. Its initial weights are drawn after the seed is set,
    so the same seed gives the same model."""
    import torch

    from ..modelspec import resolve

    spec = spec or args.model
    weights = getattr(args, "weights", None) if spec == getattr(args, "model", None) else None
    if is_saved(spec) and weights:
        raise ConvslimError("--weights applies to a zoo or factory model, not to a saved .pt")
    if spec.endswith(".csz"):
        raise ConvslimError(f"{spec} is a coded (.csz) model; decode it first: "
                            f"convslim decompress --model {spec} --out model.pt")
    if splits is not None:
        shape = list(splits.input_shape)
        classes = getattr(args, "num_classes", None) or splits.num_classes
    else:
        size = getattr(args, "input_size", None) or 32
        shape = [getattr(args, "in_channels", None) or 3, size, size]
        classes = getattr(args, "num_classes", None) or 10
    torch.manual_seed(getattr(args, "seed", 0))
    model = resolve(spec, num_classes=classes, in_channels=shape[0], width=getattr(args, "width", 1.0),
                    input_shape=shape, weights=weights, output=getattr(args, "output", None))
    if not is_saved(spec) and not weights and args.command not in ("train", "profile", "compare", "distill"):
        print(f"convslim: warning: {spec} has random weights (no --weights): figures are those of an "
              f"untrained model", file=sys.stderr)
    return model


def open_data(args, model=None):
    from ..data import load_data
    from ..binding import data_for

    norm = {"mean": getattr(args, "mean", None), "std": getattr(args, "std", None)}
    if model is not None:
        splits = data_for(model, args.data, val_fraction=args.val_fraction, seed=args.seed, resize=args.resize)
        if norm["mean"] is not None or norm["std"] is not None:    # given: wins over what the model records
            splits = splits.with_normalization(**norm)
    else:
        splits = load_data(args.data, val_fraction=args.val_fraction, seed=args.seed, resize=args.resize, **norm)
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
    if getattr(args, "resume", False) and getattr(args, "out", None):
        args.state = f"{args.out}.state.pt"   # training state, saved after every epoch
    folder_args = getattr(args, "folder_args", ("report",))
    reads = [_path_part(getattr(args, name, None)) for name in READ_ARGS]
    reads.append(_path_part(getattr(args, "data", None)))
    writes = [getattr(args, name, None) for name in WRITE_ARGS if name not in folder_args]
    folders = [getattr(args, name, None) for name in folder_args]
    check_paths(reads=[r for r in reads if r and Path(r).exists()], writes=writes, folders=folders)


def output_suffix(path, suffixes, what="--out"):
    if Path(path).suffix not in suffixes:
        raise ConvslimError(f"{what} must end in {' or '.join(suffixes)}, got {Path(path).name}")


# --- recipes: --config FILE in, the resolved settings out -------------------------------------------

def config_path(tokens):
    """The --config FILE among a command's argv tokens (the last one, as argparse keeps), or None."""
    path = None
    for i, token in enumerate(tokens):
        if token == "--config" and i + 1 < len(tokens):
            path = tokens[i + 1]
        elif token.startswith("--config="):
            path = token.removeprefix("--config=")
    return path


def _read_config(path, fail):
    """The data in a --config file: JSON, or YAML (of which JSON is a subset) when PyYAML is there."""
    try:
        import yaml
    except ImportError:
        yaml = None
    file = Path(path)
    if file.is_dir() or not file.exists():
        fail("is a folder, not a file" if file.is_dir() else "file not found")
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError):
        fail("is not JSON or YAML text")
    if file.suffix == ".json" or yaml is None:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            fail(f"is not JSON: {exc.msg} (line {exc.lineno})" + ("" if yaml or file.suffix == ".json" else
                                                                  "; YAML needs PyYAML: pip install pyyaml"))
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        fail(f"is not YAML or JSON: {getattr(exc, 'problem', None) or 'unreadable'}"
             + (f" (line {mark.line + 1})" if mark else ""))


def config_argv(parser, commands, command, path, given):
    """argv tokens for what a --config file sets, to go before the command's own tokens: each value
    then passes the same type and choices checks as if typed, and a typed flag wins because argparse
    keeps the last value. Keys that are command names and hold a mapping are per-command sections
    (the command's own section wins over the keys shared by every command); in a file with sections a
    shared key the command lacks is left to the commands that have it, elsewhere it is an error.
    `given` holds the option strings typed on the command line: a config option typed there too, or
    whose mutually exclusive rival was (prune's --cr against --ratio), is left out, so that it is
    neither checked nor in conflict."""
    def fail(message):
        parser.error(f"--config {path}: {message}")

    data = _read_config(path, fail)
    if not isinstance(data, dict):
        fail("must hold a mapping of option names to values, e.g. {\"epochs\": 5}")
    sections = {key for key, value in data.items() if key in commands and isinstance(value, dict)}
    options = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")}
    anywhere = {a.dest for p in commands.values() for a in p._actions if a.option_strings}
    items = [(k, v, not sections) for k, v in data.items() if k not in sections]
    items += [(k, v, True) for k, v in data.get(command, {}).items()] if command in sections else []
    known = parser._option_string_actions
    typed = {known[t] for t in given if t in known}   # and argparse's abbreviations (--epoch):
    typed |= {a for t in given - known.keys() if t != "--" for o, a in known.items() if o.startswith(t)}
    tokens = []
    for key, value, strict in items:
        dest = str(key).replace("-", "_")
        if key == "command":            # as written in a --json output's settings
            if value != command:
                fail(f"is a recipe for convslim {value}, not {command}")
            continue
        if dest not in options:
            if not strict and dest in anywhere:
                continue
            fail(f"convslim {command} has no option {key!r}")
        action = options[dest]
        rivals = {a for g in parser._mutually_exclusive_groups if action in g._group_actions
                  for a in g._group_actions}
        if value is None or typed & (rivals | {action}):   # null: the default, as settings write it
            continue
        option = action.option_strings[-1]
        if action.nargs == 0:               # a flag: true puts it in, false leaves it out
            if not isinstance(value, bool):
                fail(f"{key} is a flag: give true or false, got {value!r}")
            tokens += [option] if value else []
        elif isinstance(value, (bool, dict)):
            fail(f"{key} takes a value, got {value!r}")
        else:                               # a list: comma-separated, as typed ([] for prune's --ignore)
            tokens.append(f"{option}={','.join(map(str, value)) if isinstance(value, list) else value}")
    return tokens


def settings(args):
    """The command and every option's final value (defaults, --config, flags, and what the command
    filled in, such as the data a saved model records): with it a run can be repeated exactly, and
    it is itself a --config file: `jq .settings run.json > recipe.json`."""
    return {k: v for k, v in vars(args).items() if k not in ("func", "folder_args", "config")}


def write_json(args, path, payload):
    """A command's --json output, with the settings that produced it."""
    write_text_atomic(path, json.dumps({**payload, "settings": settings(args)}, indent=2, default=str))


def budget_line(summary):
    """The search judged its candidates before the final fine-tune; this says where it actually ended."""
    change = summary["final_val_acc"] - summary["base_val_acc"]
    line = (f"after the final fine-tune: {summary['metric']} {change:+.2f} points on validation against the "
            f"{summary['max_acc_loss']:g}-point budget")
    if summary.get("within_budget", True):
        return line + ": within budget"
    return (line + ": OVER BUDGET (the search's estimate was optimistic; a smaller --max-acc-loss or a longer "
            "--final-epochs leaves more room)")
