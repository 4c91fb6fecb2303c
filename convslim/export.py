"""ONNX export, checked against PyTorch with ONNX Runtime before the file is put in place; and the
ONNX Runtime session that check (and the latency figures in convslim.metrics) run on."""
import copy

import numpy as np
import torch

from .device import device_of
from .errors import ConvslimError
from .fileio import atomic_path


def export_onnx(model, path, input_shape, *, opset=17, verify=True, atol=1e-4, rtol=1e-3):
    """Write an ONNX file with a dynamic batch axis; with `verify`, compare ORT to PyTorch.

    Returns the largest absolute difference seen (None when not verified). A mismatch is an
    error and leaves no file behind.
    """
    if device_of(model).type != "cpu":   # ONNX Runtime checks on the CPU; the caller's model stays put
        model = copy.deepcopy(model).cpu()
    model = model.eval()
    example = torch.randn(2, *input_shape)
    with atomic_path(path) as tmp:
        try:
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        except Exception as exc:
            raise ConvslimError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
        diff = verify_onnx(model, tmp, input_shape, atol=atol, rtol=rtol) if verify else None
    return diff


def ort_session(onnx_path, threads=0):
    """An ONNX Runtime session on the CPU (`threads` intra-op threads; 0: ONNX Runtime's choice)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def verify_onnx(model, onnx_path, input_shape, *, batch=4, atol=1e-4, rtol=1e-3, seed=0):
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model.eval()(x.to(device_of(model))).cpu().numpy()
    sess = ort_session(onnx_path)
    if not sess.get_inputs():
        raise ConvslimError("the exported ONNX graph does not depend on its input (the trace froze it)")
    try:
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    except Exception as exc:
        raise ConvslimError(f"ONNX Runtime cannot run the exported model: {str(exc).splitlines()[0]}") from exc
    diff = float(np.abs(got - expected).max())
    if not np.allclose(got, expected, atol=atol, rtol=rtol):
        raise ConvslimError(f"ONNX Runtime output differs from PyTorch by up to {diff:.2e}")
    return diff
