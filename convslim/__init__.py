"""convslim: make trained CNNs smaller and faster while keeping a stated accuracy."""
from .checkpoint import load, save
from .data import load_data
from .errors import ConvslimError
from .export import export_onnx
from .metrics import count, profile
from .modelspec import build_model
from .train import TrainConfig, evaluate, fit, recalibrate_bn

__all__ = ["ConvslimError", "TrainConfig", "build_model", "count", "evaluate", "export_onnx", "fit",
           "load", "load_data", "profile", "recalibrate_bn", "save"]
