"""A segmentation network, not a classifier: convslim prunes it judged by mean IoU.

The net ends in a 1x1 conv that outputs one map per class; convslim finds that output layer from
the graph and never prunes it (the class count stays), however the head is built. The data are
synthetic 16x16 images of squares and bars on noise, made here, so the example needs no download.
Run: python examples/segmentation_miou.py
"""
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import convslim
from own_loop_auto_prune import train   # the same plain Adam loop: cross-entropy works per pixel too

CLASSES = 3   # background, square, bar


def shapes(n, seed):
    """Images with one filled square (class 1) and one bar (class 2) at random places, plus noise."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 16, 16, dtype=torch.long)
    for i in range(n):
        r, c = torch.randint(0, 11, (2,), generator=g).tolist()
        masks[i, r:r + 5, c:c + 5] = 1
        r, c = torch.randint(0, 14, (2,), generator=g).tolist()
        masks[i, r:r + 2, max(0, c - 6):c + 2] = 2
    images = masks.float()[:, None] / 2 + 0.3 * torch.randn(n, 1, 16, 16, generator=g)
    return images, masks


class TinySegNet(nn.Module):
    def __init__(self, width=24):
        super().__init__()
        block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())
        self.enc = nn.Sequential(block(1, width), block(width, width))
        self.down = nn.Sequential(nn.MaxPool2d(2), block(width, 2 * width))
        self.up = nn.Sequential(nn.Upsample(scale_factor=2), block(2 * width, width))
        self.head = nn.Conv2d(2 * width, CLASSES, 1)      # a conv head: its outputs are the classes

    def forward(self, x):
        skip = self.enc(x)
        return self.head(torch.cat([skip, self.up(self.down(skip))], 1))


@torch.no_grad()
def mean_iou(model, loader):
    """Mean over classes of intersection / union, in percent: higher is better."""
    model.eval()
    inter = torch.zeros(CLASSES)
    union = torch.zeros(CLASSES)
    for x, y in loader:
        pred = model(x).argmax(1)
        for c in range(CLASSES):
            inter[c] += ((pred == c) & (y == c)).sum()
            union[c] += ((pred == c) | (y == c)).sum()
    return float(100 * (inter / union.clamp(min=1)).mean())


def main(epochs=8, final_epochs=4, max_loss=5.0, out="segnet_slim.pt"):
    torch.manual_seed(0)
    train_set, val_set = TensorDataset(*shapes(512, 0)), TensorDataset(*shapes(128, 1))
    train_loader = DataLoader(train_set, batch_size=32, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=128)
    model = TinySegNet()
    train(model, train_loader, epochs)
    slim, summary = convslim.auto_prune(
        model, train_loader,
        convslim.SearchConfig(max_acc_loss=max_loss, min_interval=0.125, probe_epochs=2, final_epochs=final_epochs,
                              search="thesis"),  # the bisection: cheap probes on a model this small
        evaluate=lambda m: mean_iou(m, val_loader), finetune=lambda m, e: train(m, train_loader, e),
        progress=False)
    print(f"mIoU {summary['base_val_acc']:.2f}% -> {summary['final_val_acc']:.2f}%, "
          f"FLOPs -{summary['flops_reduction']:.1f}%; head keeps {slim.head.out_channels} classes")
    convslim.save(slim, out)
    again = convslim.load(out, model=TinySegNet())
    convslim.export_onnx(again, out.replace(".pt", ".onnx"), [1, 16, 16])
    return model, slim, again, summary


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
