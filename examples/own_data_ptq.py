"""Real int8 of your own model with your own data and metric: convslim.ptq writes an ONNX file that
runs on ONNX Runtime's int8 kernels, calibrated on your DataLoader and scored by your evaluate.

Reuses the model, loaders, loop and metric of own_loop_auto_prune.py.
Run: python examples/own_data_ptq.py
"""
import sys

import torch

import convslim
from own_loop_auto_prune import TwoBranchNet, loaders, top1, train


def main(epochs=6, out="two_branch_int8.onnx"):
    torch.manual_seed(0)
    train_loader, val_loader = loaders()
    model = TwoBranchNet()
    train(model, train_loader, epochs)
    res = convslim.ptq(model, train_loader, out, calibration="percentile", calib_images=256,
                       evaluate=lambda m: top1(m, val_loader), latency_batches=(1,))
    print(f"float {res['float_top1']:.2f}% -> int8 (ONNX Runtime) {res['top1']:.2f}%, "
          f"{res['size_ratio']:.2f}x smaller file")
    return res


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
