"""Your model, your DataLoader, your training loop and your metric, through convslim.auto_prune.

Nothing here is convslim's own except the pruner: a plain nn.Module with a concatenation, a
torch DataLoader over scikit-learn's digits, a hand-written Adam loop and a hand-written top-1.
Run: python examples/own_loop_auto_prune.py   (about a minute on a laptop CPU)
"""
import sys

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import convslim


class TwoBranchNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(32, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, classes))

    def forward(self, x):
        x = self.stem(x)
        return self.head(torch.cat([self.a(x), self.b(x)], 1))


def loaders(seed=0):
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, val = order[:1400], order[1400:]
    return (DataLoader(TensorDataset(x[train], y[train]), batch_size=64, shuffle=True),
            DataLoader(TensorDataset(x[val], y[val]), batch_size=256))


def train(model, loader, epochs):
    """My own loop: Adam, plain cross-entropy, fractional epochs allowed."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = max(1, round(epochs * len(loader)))
    model.train()
    done = 0
    while done < steps:
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            done += 1
            if done == steps:
                break
    model.eval()


@torch.no_grad()
def top1(model, loader):
    """My own metric, in percent."""
    model.eval()
    hits = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    return 100.0 * hits / len(loader.dataset)


def main(epochs=6, final_epochs=4, max_loss=2.0, out="two_branch_slim.pt"):
    torch.manual_seed(0)
    train_loader, val_loader = loaders()
    model = TwoBranchNet()
    train(model, train_loader, epochs)
    slim, summary = convslim.auto_prune(
        model, train_loader,
        convslim.SearchConfig(max_acc_loss=max_loss, min_interval=0.125, probe_epochs=1, final_epochs=final_epochs,
                              search="thesis"),  # the bisection: cheap probes on a model this small
        example_input=torch.randn(1, 1, 8, 8),
        evaluate=lambda m: top1(m, val_loader),
        finetune=lambda m, e: train(m, train_loader, e),
        progress=False)
    print(f"top-1 {summary['base_val_acc']:.2f}% -> {summary['final_val_acc']:.2f}%, "
          f"FLOPs -{summary['flops_reduction']:.1f}%, params -{summary['params_reduction']:.1f}%")
    convslim.save(slim, out)
    again = convslim.load(out, model=TwoBranchNet())       # your code builds the base; the file replays the pruning
    convslim.export_onnx(again, out.replace(".pt", ".onnx"), [1, 8, 8])
    return model, slim, again, summary


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
