"""Models as users write them, not as the zoo does: concatenated branches, grouped convs; and the
search's honest answer when nothing fits the budget."""
import copy

import pytest
import torch
from torch import nn

import convslim
from convslim.data import load_data
from convslim.budget import SearchConfig, budget_search


class Branches(nn.Module):
    """Two concatenated branches and a grouped conv."""

    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.wide = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.thin = nn.Sequential(nn.Conv2d(8, 2, 1), nn.BatchNorm2d(2), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(18, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.wide(x), self.thin(x)], 1)
        return self.head(self.grouped(self.mix(x)))


def cbr(i, o, k=3, s=1, g=1):
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o), nn.ReLU())

class SE(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1); self.fc2 = nn.Conv2d(c // r, c, 1)
    def forward(self, x):
        w = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * w

class Dense(nn.Module):
    def __init__(self, c, g=8):
        super().__init__()
        self.a = cbr(c, g); self.b = cbr(c + g, g)
    def forward(self, x):
        x = torch.cat([x, self.a(x)], 1)
        return torch.cat([x, self.b(x)], 1)

class UserNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.stem = cbr(in_channels, 16)
        self.b1 = cbr(16, 8, 1); self.b2 = cbr(16, 8, 3)
        self.se = SE(16)
        self.res = nn.Sequential(cbr(16, 32, 3, 2), nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32))
        self.proj = nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), nn.BatchNorm2d(32))
        self.dw = cbr(32, 32, 3, 1, 32)
        self.dense = Dense(32)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, num_classes))
    def forward(self, x):
        x = self.stem(x)
        x = self.se(torch.cat([self.b1(x), self.b2(x)], 1))
        x = torch.relu(self.res(x) + self.proj(x))
        x = self.dense(self.dw(x))
        return self.head(x)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def branches():
    torch.manual_seed(0)
    return convslim.build_model(f"{__file__}:Branches", num_classes=10, in_channels=1, input_shape=[1, 8, 8])


@pytest.mark.parametrize("criterion", ["l1", "fpgm", "permutation"])
def test_no_layer_of_a_user_network_is_emptied(digits, criterion):
    """Concatenated branches, an SE gate, a residual projection, a depthwise conv and a dense block:
    a group spanning a concatenation once lost a whole branch here (weight of size [0, 8, 1, 1])."""
    torch.manual_seed(0)
    model = convslim.build_model(f"{__file__}:UserNet", num_classes=10, in_channels=1, input_shape=[1, 8, 8])
    slim, kept = convslim.prune(model, digits, ratio=0.5, criterion=criterion)
    convs = [m for m in slim.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels >= 1 for c in convs)
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())
    assert slim(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_grouped_convs_are_left_whole_and_named(digits, capsys):
    slim, kept = convslim.prune(branches(), digits, ratio=0.5, criterion="l1")
    assert slim.grouped[0].out_channels == 16 and slim.wide[0].out_channels < 16
    assert slim(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert "grouped convs (grouped.0)" in capsys.readouterr().err


def test_search_with_no_probe_kept_changes_nothing_and_claims_nothing(digits):
    model = convslim.build_model("digitsnet", num_classes=10, in_channels=1, input_shape=[1, 8, 8])
    convslim.fit(model, digits, convslim.TrainConfig(epochs=2, lr=0.05, batch_size=64, progress=False),
                 validate=False)
    lines = []

    def ruin(value):            # every candidate is broken: no probe can stay within the budget
        cand = copy.deepcopy(model)
        with torch.no_grad():
            for p in cand.parameters():
                p.zero_()
        return cand, {}

    cfg = SearchConfig(max_acc_loss=1.0, min_interval=0.25, probe_epochs=0, final_epochs=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    best, summary, rec = budget_search(model, digits, cfg, ruin, key="cr", header={}, echo=lines.append)
    assert rec is None and summary["pruned"] is False
    assert summary["test_acc"] == summary["base_test_acc"] and summary["epochs"] == 0
    assert all(torch.equal(before[k], v) for k, v in best.state_dict().items())
    assert any("nothing is pruned, nothing is fine-tuned" in line for line in lines)


def test_ignored_layers_keep_their_channels_and_a_typo_is_named(digits):
    model = branches()
    slim, _ = convslim.prune(model, digits, ratio=0.5, criterion="l1", ignored_layers=["wide.*"])
    assert slim.wide[0].out_channels == 16 and slim.stem[0].out_channels < 8
    with pytest.raises(convslim.ConvslimError, match="matches no layer"):
        convslim.prune(branches(), digits, ratio=0.5, criterion="l1", ignored_layers=["wdie.*"])


def test_a_plain_module_takes_its_input_size_from_the_example():
    """FLOPs of a 64x64 model are those of a 64x64 input, not of a guessed 32x32 one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    batches = [(torch.randn(4, 3, 64, 64), torch.randint(0, 4, (4,))) for _ in range(2)]
    imp = convslim.channel_importance(model, batches, criterion="l1")
    flops = convslim.count(model, torch.randn(1, 3, 64, 64))["flops"]
    from convslim.checkpoint import example_input, record_of
    assert record_of(model).input_shape == [3, 64, 64]
    assert convslim.count(model, example_input(model))["flops"] == flops
    slim, kept = convslim.apply_rule(model, imp, "ratio", 0.5)
    assert slim[0].out_channels == 4 and slim[-1].out_features == 4


def test_a_plain_module_with_a_tuple_output_is_named_then_selected(digits):
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            f = self.body(x)
            return {"logits": self.head(f), "features": f}

    with pytest.raises(convslim.ConvslimError, match="select_output"):
        convslim.prune(Pair(), digits, ratio=0.5, criterion="l1")
    model = convslim.select_output(Pair(), "logits")
    slim, _ = convslim.prune(model, digits, ratio=0.5, criterion="l1")
    assert slim(torch.zeros(2, 1, 8, 8)).shape == (2, 10) and slim.body[0].out_channels == 4


def test_a_thesis_search_that_keeps_nothing_points_to_the_progressive_one(digits):
    """When every probe reads below the budget (as a short fine-tune alone can make a converged model
    read), the line says what else to try, the progressive search included."""
    model = branches()
    base = convslim.count(model, torch.zeros(1, 1, 8, 8))["flops"]
    lines = []
    cfg = SearchConfig(max_acc_loss=1.0, min_interval=0.25, probe_epochs=0, final_epochs=1, search="thesis", device="cpu")
    best, summary = convslim.auto_prune(
        model, digits, cfg, evaluate=lambda m: 90.0 if convslim.count(m, torch.zeros(1, 1, 8, 8))["flops"] == base else 10.0,
        progress=False, echo=lines.append)
    assert summary["pruned"] is False and summary["flops"] == base
    assert any("nothing is pruned" in line and "--search progressive" in line for line in lines)


def test_a_result_that_ends_over_the_budget_says_so(digits):
    """A search judges candidates before their final fine-tune; when the final model ends further
    below the original than the budget allows, the summary and the command's line say so."""
    from convslim.cli.common import budget_line

    model = branches()
    base = convslim.count(model, torch.zeros(1, 1, 8, 8))["flops"]
    def finetune(m, epochs):
        m.tuned_epochs = getattr(m, "tuned_epochs", 0) + epochs

    def evaluate(m):          # candidates read within budget after a probe and 3 points down after the final tune
        if convslim.count(m, torch.zeros(1, 1, 8, 8))["flops"] == base:
            return 90.0
        return 87.0 if getattr(m, "tuned_epochs", 0) >= 1 else 89.5

    cfg = SearchConfig(max_acc_loss=1.0, min_interval=0.25, probe_epochs=0.5, final_epochs=1, search="thesis",
                       device="cpu")
    _, summary = convslim.auto_prune(model, digits, cfg, evaluate=evaluate, finetune=finetune, progress=False,
                                     echo=lambda line: None)
    assert summary["pruned"] and summary["final_val_acc"] == 87.0 and summary["within_budget"] is False
    assert "-3.00 points on validation" in budget_line(summary) and "OVER BUDGET" in budget_line(summary)
    assert budget_line({**summary, "final_val_acc": 89.5, "within_budget": True}).endswith("within budget")


def test_a_step_is_charged_from_the_original_at_most(digits):
    """The progressive search reads where a step starts after the same fine-tune (paired); when that
    reading is above the original's, the step is charged from the original's: the budget is counted
    from the original, and a lucky start must not charge every step."""
    model = branches()
    base = convslim.count(model, torch.zeros(1, 1, 8, 8))["flops"]

    def finetune(m, epochs):
        m.tuned_epochs = getattr(m, "tuned_epochs", 0) + epochs

    def evaluate(m):          # the original 90, fine-tuned 92 (its start); any pruned model 89.5
        if convslim.count(m, torch.zeros(1, 1, 8, 8))["flops"] == base:
            return 92.0 if getattr(m, "tuned_epochs", 0) else 90.0
        return 89.5

    cfg = SearchConfig(max_acc_loss=1.0, probe_epochs=0.5, final_epochs=1, search="progressive", distill=False,
                       device="cpu")
    _, summary = convslim.auto_prune(model, digits, cfg, evaluate=evaluate, finetune=finetune, progress=False,
                                     echo=lambda line: None)
    first = summary["log"][0]
    assert first["start_read"] == 92.0 and first["start_val_acc"] == 90.0
    assert first["cost"] == pytest.approx(0.5) and first["decision"] == "keep" and summary["flops"] < base
