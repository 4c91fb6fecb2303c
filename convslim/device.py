"""Where a model lives. Every tensor convslim makes for a model (example inputs, calibration
batches, accumulators) is made on that device, so a model on CUDA is never fed or combined with
CPU tensors. The lowest module of all: checkpoint, graph tracing, metrics and export need it."""
import itertools

import torch


def device_of(model):
    """The device a model's weights live on (its first parameter or buffer; CPU when it has none)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def deterministic(enabled: bool = True) -> None:
    """Same seed, same weights on a GPU too: cuDNN's deterministic kernels, no autotuning, and a fixed
    cuBLAS workspace (the variable is read when cuBLAS starts, so call this before the first matmul).
    convslim's own device choice (`pick_device`) calls it for CUDA unless CONVSLIM_DETERMINISTIC=0;
    it costs some GPU speed. CPU runs are deterministic already."""
    import os

    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled and torch.backends.cudnn.benchmark
