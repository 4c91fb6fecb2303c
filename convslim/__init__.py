"""convslim: make trained CNNs smaller and faster while keeping a stated accuracy."""
from .checkpoint import load, save
from .data import load_data
from .errors import ConvslimError
from .export import export_onnx
from .metrics import count, profile
from .modelspec import build_model
from .pruning.criteria import PermutationOptions
from .pruning.prune import apply_rule, channel_importance, prune
from .pruning.search import SearchConfig, auto_prune
from .decomposition.search import auto_decompose
from .quantization.methods import ptq
from .task import Task
from .train import TrainConfig, evaluate, fit, recalibrate_bn

__all__ = ["ConvslimError", "PermutationOptions", "SearchConfig", "Task", "TrainConfig", "apply_rule",
           "auto_decompose", "auto_prune",
           "build_model", "channel_importance", "count", "evaluate", "export_onnx", "fit", "load", "load_data",
           "profile", "prune", "ptq", "recalibrate_bn", "save"]
