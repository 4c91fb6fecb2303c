"""A model bound to its data: which data and normalisation it was trained with (kept in its
record), and loading data that fits a saved model. Shared by the CLI, the benchmarks and the
Python API."""
import dataclasses

from .checkpoint import record_of
from .data import load_data
from .errors import ConvslimError


def data_for(model, spec, *, val_fraction=0.1, seed=0, resize=None):
    """Load data for an existing model, with the normalisation it was trained with, and check fit."""
    splits = load_data(spec, val_fraction=val_fraction, seed=seed, resize=resize)
    rec = record_of(model)
    if list(splits.input_shape) != list(rec.input_shape):
        raise ConvslimError(f"wrong input size: data {spec} has images of shape {tuple(splits.input_shape)}, "
                            f"the model expects {tuple(rec.input_shape)}")
    if splits.num_classes != rec.arch["num_classes"]:
        raise ConvslimError(f"data {spec} has {splits.num_classes} classes, the model outputs {rec.arch['num_classes']}")
    norm = rec.meta.get("normalization")
    if norm:
        splits = dataclasses.replace(splits, mean=tuple(norm["mean"]), std=tuple(norm["std"]))
    return splits


def remember_data(model, splits, spec):
    """Record which data and normalisation a model was trained with, so later steps reuse them."""
    rec = record_of(model)
    rec.input_shape = list(splits.input_shape)
    rec.meta.update(data=spec, classes=list(splits.classes),
                    normalization={"mean": list(splits.mean), "std": list(splits.std)})
