"""convslim: make trained CNNs smaller and faster while keeping a stated accuracy.

The core (checkpoint, graph, train, budget, task, ...) names no compression family. Each family
registers what loading and saving its models needs (edit replayers, save steps) with
convslim.checkpoint when it is imported; importing them here fills those registries, so
`convslim.load` can rebuild any model whichever family made it.
"""
# The families that register edit replayers or save steps with convslim.checkpoint when imported;
# a new family that records edits is added here, so that `convslim.load` rebuilds what it made.
from . import convert, decomposition, quantization  # noqa: F401
from .architecture import select_output
from .budget import SearchConfig
from .checkpoint import load, save
from .data import load_data
from .decomposition.auto import auto_decompose
from .device import deterministic
from .errors import ConvslimError
from .export import export_onnx
from .latency import LatencyTable, measure_model
from .metrics import count, profile
from .modelspec import build_model
from .pruning.auto import auto_prune
from .pruning.criteria import PermutationOptions
from .pruning.prune import apply_rule, channel_importance, prune
from .quantization.methods import ptq
from .sparsity import sparsify
from .task import Task, trainer
from .train import TrainConfig, evaluate, fit, recalibrate_bn

__all__ = ["ConvslimError", "PermutationOptions", "SearchConfig", "Task", "TrainConfig", "apply_rule",
           "auto_decompose", "auto_prune", "deterministic",
           "LatencyTable", "build_model", "channel_importance", "count", "evaluate", "export_onnx", "fit", "load",
           "load_data", "measure_model",
           "profile", "prune", "ptq", "recalibrate_bn", "save", "select_output", "sparsify", "trainer"]
