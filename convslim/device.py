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
