"""Channel pruning: the retention rules, exact surgery, every zoo model, the automatic search."""
import copy
import json
import math
import textwrap

import pytest
import torch
from torch import nn

import convslim
from conftest import on
from convslim.budget import CALIBRATED_PROBE_EPOCHS, PROBE_EPOCHS, RATIO_PRIOR, RATIO_STEP, final_damage
from convslim.checkpoint import Record, attach
from convslim.cli import main
from convslim.data import Splits
from convslim.models import available
from convslim.pruning.criteria import CRITERIA
from convslim.pruning.prune import kept_per_layer
from convslim.pruning.retention import keep_cumulative, keep_ratio
from convslim.train import TrainConfig


def test_cumulative_rule_keeps_smallest_set_reaching_cr():
    p = torch.tensor([0.05, 0.5, 0.15, 0.3, 0.0])
    assert keep_cumulative(p, 0.8) == [1, 3]
    assert keep_cumulative(p, 0.81) == [1, 2, 3]
    assert keep_cumulative(p, 1.0) == [0, 1, 2, 3]      # every non-zero contribution
    assert keep_cumulative(p, 0.0) == [1]               # at least one channel
    assert keep_cumulative(p, 0.3, multiple=4) == [0, 1, 2, 3]
    with pytest.raises(convslim.ConvslimError):
        keep_cumulative(p, 1.5)


def test_ratio_rule_removes_the_lowest_share():
    p = torch.tensor([0.4, 0.1, 0.3, 0.2])
    assert keep_ratio(p, 0.5) == [0, 2]
    assert keep_ratio(p, 0.99) == [0]


def rgb_splits(n=96, size=32, classes=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % classes
    return Splits("synthetic", classes, [str(i) for i in range(classes)], x, y, x[:16], y[:16], x[:16], y[:16],
                  (0.5,) * 3, (0.25,) * 3, False)


def test_kept_weights_are_the_original_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3),
                          nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    attach(model, Record(arch={"model": "x", "num_classes": 4, "in_channels": 3, "width": 1.0}, input_shape=[3, 32, 32]))
    imp = convslim.channel_importance(model, rgb_splits(), calib_batches=1)
    slim, kept = convslim.apply_rule(model, imp, "ratio", 0.5)
    keep = sorted(torch.argsort(imp.contributions["0"], descending=True)[:4].tolist())
    assert kept["0"] == 4
    assert torch.equal(slim[0].weight, model[0].weight[keep])
    assert torch.equal(slim[0].bias, model[0].bias[keep])
    assert torch.equal(slim[1].running_var, model[1].running_var[keep])
    assert torch.equal(slim[3].weight[:, :, :, :], model[3].weight[:, keep][kept_rows(imp, "3", 3)])
    assert slim[8].out_features == 4                     # the classifier keeps its classes


def kept_rows(imp, layer, k):
    return sorted(torch.argsort(imp.contributions[layer], descending=True)[:k].tolist())


# shufflenetv1: grouped 1x1 convs couple every channel; shufflenetv2: torch-pruning cannot trace
# its channel shuffle
UNPRUNABLE = {"shufflenetv1": "no prunable", "shufflenetv2": "cannot trace"}


@pytest.mark.parametrize("name", available())
def test_every_zoo_model_prunes_smaller_and_still_works(name, tmp_path):
    splits = rgb_splits()
    width = 0.25 if name not in ("digitsnet", "digits_resnet") else 1.0
    model = convslim.build_model(name, num_classes=4, width=width, input_shape=[3, 32, 32]).eval()
    if name in UNPRUNABLE:  # a clear one-line refusal, not a crash
        with pytest.raises(convslim.ConvslimError, match=UNPRUNABLE[name]):
            convslim.channel_importance(model, splits, calib_batches=1, batch_size=16)
        return
    imp = convslim.channel_importance(model, splits, calib_batches=1, batch_size=16)
    slim, kept = convslim.apply_rule(model, imp, "cr", 0.7)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert params(slim) < params(model)
    assert all(c >= 1 for c in kept_per_layer(slim).values())
    x = torch.randn(2, 3, 32, 32)
    assert slim(x).shape == (2, 4)
    path = convslim.save(slim, tmp_path / "slim.pt")
    again = convslim.load(path)
    assert torch.allclose(again(x), slim(x), atol=1e-5)
    if name in ("resnet20", "googlenet", "densenet121", "mobilenetv2", "vgg11"):  # one per coupling kind
        assert convslim.export_onnx(again, tmp_path / "slim.onnx", [3, 32, 32]) < 1e-3


def test_cr_one_keeps_everything_and_zero_keeps_one_per_group(digits):
    model = trained_model(digits)
    imp = convslim.channel_importance(model, digits, calib_batches=2)
    full, _ = convslim.apply_rule(model, imp, "cr", 1.0)
    assert kept_per_layer(full) == kept_per_layer(model)
    tiny, kept = convslim.apply_rule(model, imp, "cr", 0.0)
    assert set(kept.values()) == {1}
    assert tiny(torch.randn(1, 1, 8, 8)).shape == (1, 10)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_scores_every_group(criterion, digits, device):
    model = copy.deepcopy(trained_model(digits)).to(device)
    imp = convslim.channel_importance(model, digits, criterion=criterion, calib_batches=2)
    for g in imp.groups:
        p = imp.contributions[g.root]
        assert p.shape == (g.size,) and torch.all(p >= 0) and p.sum().item() == pytest.approx(1, abs=1e-4)
    slim, _ = convslim.apply_rule(model, imp, "ratio", 0.5)
    assert on(model, device) and on(slim, device)          # scored and pruned where the model is
    assert slim(torch.randn(2, 1, 8, 8, device=device)).shape == (2, 10)


_trained = {}

def interrupt_at(prefix, lines):
    """An echo that records lines and raises KeyboardInterrupt at the first starting with prefix."""
    def echo(msg):
        lines.append(msg)
        if msg.startswith(prefix):
            raise KeyboardInterrupt
    return echo


def trained_model(digits):
    if "m" not in _trained:
        torch.manual_seed(0)
        m = convslim.build_model("digits_resnet", num_classes=10, in_channels=1, input_shape=[1, 8, 8])
        convslim.fit(m, digits, TrainConfig(epochs=6, lr=0.05, batch_size=64, progress=False, device="cpu"),
                     validate=False)
        _trained["m"] = m.eval()
    return _trained["m"]


def test_auto_prune_stays_in_budget_logs_and_resumes(digits, tmp_path, device):
    model = copy.deepcopy(trained_model(digits))   # on the CPU; the search runs on cfg.device
    cfg = convslim.SearchConfig(max_acc_loss=2.0, min_interval=0.1, probe_epochs=1, final_epochs=1, lr=0.02,
                                batch_size=64, device=device, search="thesis")
    log = tmp_path / "search.json"
    lines = []
    with pytest.raises(KeyboardInterrupt):
        convslim.auto_prune(model, digits, cfg, log_path=log, echo=interrupt_at("probe 2", lines))
    assert len(json.loads(log.read_text())["probes"]) == 2
    best, summary = convslim.auto_prune(model, digits, cfg, log_path=log, echo=lines.append)
    assert any(line.startswith("resuming") for line in lines)
    probes = json.loads(log.read_text())["probes"]
    assert len(probes) == summary["probes"] == math.ceil(math.log2(1 / 0.1))
    base = summary["base_val_acc"]
    lo, hi = 0.0, 1.0
    for p in probes:
        assert p["cr"] == pytest.approx((lo + hi) / 2)
        assert (p["decision"] == "keep") == (p["val_acc"] + 2.0 >= base)
        lo, hi = (lo, p["cr"]) if p["decision"] == "keep" else (p["cr"], hi)
        assert set(p) >= {"cr", "channels", "flops", "params", "val_acc", "decision", "seconds"}
    if any(p["decision"] == "keep" for p in probes):
        assert summary["flops"] < summary["base_flops"]
        assert summary["flops"] == min(p["flops"] for p in probes if p["decision"] == "keep")
    assert on(best, device)
    assert best(torch.randn(2, 1, 8, 8, device=device)).shape == (2, 10)


def test_prune_and_auto_commands(digits, tmp_path, capsys):
    base = tmp_path / "base.pt"
    convslim.save(trained_model(digits), base)
    slim = tmp_path / "slim.pt"
    assert main(["prune", "--model", str(base), "--data", "digits", "--cr", "0.8", "--out", str(slim),
                 "--report", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "FLOPs reduction" in out
    assert sum(p.numel() for p in convslim.load(slim).parameters()) < sum(p.numel() for p in convslim.load(base).parameters())
    for name in ("report.md", "report.html", "channels_kept.png", "importance.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    taught = tmp_path / "taught.pt"
    assert main(["prune", "--model", str(base), "--data", "digits", "--ratio", "0.5", "--finetune-epochs", "1",
                 "--teacher", str(base), "--out", str(taught)]) == 0
    assert convslim.load(taught)(torch.randn(1, 1, 8, 8)).shape == (1, 10)
    capsys.readouterr()
    auto = tmp_path / "auto.pt"
    assert main(["auto", "--model", str(base), "--data", "digits", "--max-acc-loss", "2", "--min-interval", "0.25",
                 "--search", "thesis", "--probe-epochs", "0.5", "--final-epochs", "0.5", "--out", str(auto),
                 "--report", str(tmp_path / "auto-report")]) == 0
    out = capsys.readouterr().out
    assert "search cost: 2 probes" in out and "after the final fine-tune: top-1" in out and auto.exists() and (tmp_path / "auto.pt.search.json").exists()
    assert json.loads((tmp_path / "auto.pt.search.json").read_text())["settings"]["max_acc_loss"] is not None
    page = (tmp_path / "auto-report" / "report.md").read_text()
    assert "Search trajectory" in page and (tmp_path / "auto-report" / "search.png").stat().st_size > 0
    assert "validation change against the budget" in page and ("within |" in page or "OVER |" in page)


@pytest.mark.parametrize("argv, message", [
    (["--max-acc-loss", "-1"], "max-acc-loss"),
    (["--max-acc-loss", "500"], "max-acc-loss"),
    (["--min-interval", "0"], "min-interval"),
    (["--min-interval", "1.5"], "min-interval"),
])
def test_auto_bad_budget_is_one_line(digits, tmp_path, capsys, argv, message):
    base = tmp_path / "base.pt"
    convslim.save(trained_model(digits), base)
    code = main(["auto", "--model", str(base), "--data", "digits", "--out", str(tmp_path / "o.pt"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.pt"]


def test_untraceable_model_is_one_line(tmp_path, capsys):
    src = tmp_path / "odd.py"
    src.write_text(textwrap.dedent("""
        import torch
        from torch import nn
        class Odd(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(1, 4, 3)
                self.fc = nn.Linear(4, 10)
            def forward(self, x):
                with torch.no_grad():
                    x = self.conv(x)
                return self.fc(x.mean((2, 3)))
        def make(num_classes=10, in_channels=1):
            return Odd()
    """))
    code = main(["prune", "--model", f"{src}:make", "--in-channels", "1", "--data", "digits", "--cr", "0.5",
                 "--out", str(tmp_path / "o.pt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "cannot trace" in err[-1]
    assert len(err) == 2 and "random weights" in err[0]     # the untrained factory model is named too
    assert not (tmp_path / "o.pt").exists()


def test_target_flops_gives_the_least_pruned_model_under_it(digits, tmp_path, capsys):
    model = copy.deepcopy(trained_model(digits))
    cfg = convslim.SearchConfig(final_epochs=0.2, batch_size=64, device="cpu")
    best, summary = convslim.auto_prune(model, digits, cfg, target=("flops", 0.5), progress=False)
    assert summary["flops"] <= 0.5 * summary["base_flops"] and summary["pruned"]
    from convslim.pruning.auto import cr_for_target
    imp = convslim.channel_importance(model, digits)
    x = torch.randn(1, 1, 8, 8)
    cr = cr_for_target(lambda v: convslim.count(convslim.apply_rule(model, imp, "cr", v)[0], x)["flops"],
                       0.5 * summary["base_flops"])
    more, _ = convslim.apply_rule(model, imp, "cr", min(1.0, cr + 2 ** -10))
    assert convslim.count(more, x)["flops"] > 0.5 * summary["base_flops"]   # the least pruning
    out, base = tmp_path / "t.pt", tmp_path / "base.pt"
    convslim.save(model, base)
    assert main(["auto", "--model", str(base), "--data", "digits", "--target-params", "0.6",
                 "--final-epochs", "0.2", "--out", str(out)]) == 0
    assert "pruning to at most 0.6 of the original params" in capsys.readouterr().out and out.exists()


def test_final_damage_follows_a_power_law_in_the_epochs_and_never_rises():
    # damage 4 after 0.25 epoch, 2 after 0.25 + 0.75: halved when the epochs quadruple, so b = 0.5;
    # 4 more epochs (final) take the candidate from 1 to 5 epochs: 2 * 5 ** -0.5
    damage, b = final_damage(4.0, 0.25, 2.0, 0.75, 4.0)
    assert b == pytest.approx(0.5) and damage == pytest.approx(2 / math.sqrt(5))
    assert final_damage(2.0, 0.25, 3.0, 0.75, 4.0) == (3.0, 0.0)      # no fall between readings: none predicted
    assert final_damage(2.0, 0.25, -0.5, 0.75, 4.0)[0] == 0.0         # fully recovered
    assert final_damage(2.0, 0.0, 1.0, 0.75, 4.0) == (1.0, 0.0)       # no probe fine-tune: nothing to fit


def test_calibrated_search_verifies_and_stays_within_the_epoch_budget(digits, tmp_path):
    model = copy.deepcopy(trained_model(digits))
    budget = 2.0
    cfg = convslim.SearchConfig(max_acc_loss=budget, min_interval=0.0625, probe_epochs=0.25, final_epochs=3,
                                batch_size=64, device="cpu", search="calibrated", verify_epochs=0.5, distill=False)
    log = tmp_path / "cal.json"
    best, summary = convslim.auto_prune(model, digits, cfg, log_path=log, progress=False)
    records = json.loads(log.read_text())["probes"]
    verified = [r for r in records if r["kind"] == "verify"]
    assert verified and summary["verifications"] == len(verified)
    base = summary["base_val_acc"]
    for r in verified:             # judged by the damage predicted after the final fine-tune
        predicted, _ = final_damage(base - r["probe_val"], 0.25, base - r["val_acc"], 0.5, 3)
        assert r["predicted_final_damage"] == pytest.approx(predicted)
        assert (r["decision"] == "keep") == (predicted <= budget)
    kept = [r for r in verified if r["decision"] == "keep"]
    assert kept and summary["chosen_cr"] == min(r["cr"] for r in kept)
    assert summary["search_epochs"] <= cfg.final_epochs
    assert len(verified) >= 2
    assert verified[0]["threshold"] == pytest.approx(base - budget / RATIO_PRIOR)
    ratio = RATIO_PRIOR
    for earlier, later in zip(verified, verified[1:]):        # probe damage scaled by the last verification's ratio
        ratio = min(max(earlier["predicted_final_damage"] / (base - earlier["probe_val"]), RATIO_STEP * ratio), 1)
        assert earlier["ratio"] == pytest.approx(ratio)
        assert later["threshold"] == pytest.approx(base - budget / ratio)
        # a harder cut after a kept verification, a milder one after a failed one
        assert (later["cr"] < earlier["cr"]) == (earlier["decision"] == "keep")
    again, summary2 = convslim.auto_prune(model, digits, cfg, log_path=log, progress=False)   # resumes: no new work
    assert summary2["chosen_cr"] == summary["chosen_cr"] and len(json.loads(log.read_text())["probes"]) == len(records)


def test_auto_distils_from_the_original_unless_told_not_to(digits, tmp_path, capsys):
    """The pruner's fine-tunes learn from the original by default (RESULTS.md table 8); --no-distill and
    distill=False turn it off, and the log says which ran."""
    model = copy.deepcopy(trained_model(digits))
    cfg = dict(max_acc_loss=5.0, min_interval=0.25, probe_epochs=0, final_epochs=0.1, batch_size=64, device="cpu",
               search="thesis")
    for distill, expected in ((None, True), (False, False), (True, True)):
        log = tmp_path / f"{distill}.json"
        convslim.auto_prune(model, digits, convslim.SearchConfig(**cfg, distill=distill), log_path=log, progress=False)
        assert json.loads(log.read_text())["header"]["config"]["distill"] is expected
    base = tmp_path / "base.pt"
    convslim.save(model, base)
    args = ["auto", "--model", str(base), "--data", "digits", "--probe-epochs", "0", "--final-epochs", "0.1",
            "--min-interval", "0.25", "--search", "thesis", "--max-acc-loss", "5"]
    assert main(args + ["--out", str(tmp_path / "a.pt")]) == 0
    assert "distilling from the original" in capsys.readouterr().out
    assert json.loads((tmp_path / "a.pt.search.json").read_text())["header"]["config"]["distill"] is True
    assert main(args + ["--no-distill", "--out", str(tmp_path / "b.pt")]) == 0
    assert "distilling" not in capsys.readouterr().out
    assert json.loads((tmp_path / "b.pt.search.json").read_text())["header"]["config"]["distill"] is False


def test_each_search_gets_the_probe_length_it_was_measured_with_unless_told(digits, tmp_path, capsys):
    """--probe-epochs left out: 0.2 for the calibrated search (table 8), 0.5 for the others; a given value
    wins. The command's first line says what the search will spend."""
    from convslim.pruning.auto import auto_defaults
    model = copy.deepcopy(trained_model(digits))
    base = tmp_path / "base.pt"
    convslim.save(model, base)
    args = ["auto", "--model", str(base), "--data", "digits", "--search", "calibrated", "--final-epochs", "0.5",
            "--verify-epochs", "0.2", "--min-interval", "0.25", "--max-acc-loss", "2", "--batch-size", "64"]
    assert main(args + ["--out", str(tmp_path / "a.pt")]) == 0
    assert (f"{CALIBRATED_PROBE_EPOCHS:g}-epoch probes and 0.2-epoch verifications, at most 0.5 epochs in all"
            in capsys.readouterr().out)
    assert json.loads((tmp_path / "a.pt.search.json").read_text())["header"]["config"]["probe_epochs"] == \
        CALIBRATED_PROBE_EPOCHS
    log = tmp_path / "given.json"
    convslim.auto_prune(model, digits, convslim.SearchConfig(max_acc_loss=2.0, min_interval=0.25, final_epochs=0.5,
                                                             verify_epochs=0.2, batch_size=64, device="cpu",
                                                             search="calibrated", probe_epochs=0.3),
                        log_path=log, progress=False)
    assert json.loads(log.read_text())["header"]["config"]["probe_epochs"] == 0.3
    assert auto_defaults(convslim.SearchConfig(search="thesis")).probe_epochs == PROBE_EPOCHS
    assert auto_defaults(convslim.SearchConfig(search="progressive")).probe_epochs == PROBE_EPOCHS
    assert CALIBRATED_PROBE_EPOCHS < PROBE_EPOCHS


def test_calibrated_search_never_spends_more_than_the_final_fine_tune(digits):
    """A budget too small for a verification: the readings stop where the epochs run out."""
    model = copy.deepcopy(trained_model(digits))
    cfg = convslim.SearchConfig(max_acc_loss=2.0, min_interval=0.125, probe_epochs=0.25, final_epochs=0.6,
                                batch_size=64, device="cpu", search="calibrated", verify_epochs=0.5)
    _, summary = convslim.auto_prune(model, digits, cfg, progress=False)
    assert summary["search_epochs"] <= cfg.final_epochs + 1e-9


def test_a_stop_in_the_final_fine_tune_resumes_to_the_same_model(digits, tmp_path, monkeypatch):
    """auto's final fine-tune saves its state every epoch: stopped in its second epoch and run again,
    it ends with the same weights as a run that never stopped."""
    import convslim.train as train

    model = copy.deepcopy(trained_model(digits))
    cfg = convslim.SearchConfig(max_acc_loss=60.0, min_interval=0.25, probe_epochs=0, final_epochs=2, lr=0.02,
                                batch_size=64, device="cpu", search="thesis", distill=False)
    straight, summary = convslim.auto_prune(model, digits, cfg, log_path=tmp_path / "a.json", progress=False)
    assert summary["pruned"] and summary["final_epochs"] == 2
    assert not (tmp_path / "a.json.final-state.pt").exists()          # removed once finished

    real = train.cross_entropy
    steps_per_epoch = len(digits.train_y) // 64
    calls = {"n": 0}

    def stopping(label_smoothing=0.0):
        inner = real(label_smoothing)

        def loss_fn(net, x, y):
            calls["n"] += 1
            if calls["n"] == steps_per_epoch + 1:
                raise KeyboardInterrupt
            return inner(net, x, y)
        return loss_fn

    monkeypatch.setattr(train, "cross_entropy", stopping)
    with pytest.raises(KeyboardInterrupt):
        convslim.auto_prune(model, digits, cfg, log_path=tmp_path / "b.json", progress=False)
    assert (tmp_path / "b.json.final-state.pt").exists()
    monkeypatch.setattr(train, "cross_entropy", real)
    resumed, _ = convslim.auto_prune(model, digits, cfg, log_path=tmp_path / "b.json", progress=False)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def stopped_at_step_2_and_resumed(digits, tmp_path, search):
    """A step search on digits (budget 3 points, 0.5-epoch steps, 3 final epochs) stopped at its
    second step and run again: (model, cfg, log path, best, summary)."""
    model = copy.deepcopy(trained_model(digits))
    cfg = convslim.SearchConfig(max_acc_loss=3.0, probe_epochs=0.5, final_epochs=3, lr=0.02, batch_size=64,
                                device="cpu", search=search)
    log = tmp_path / "search.json"
    with pytest.raises(KeyboardInterrupt):
        convslim.auto_prune(model, digits, cfg, log_path=log, echo=interrupt_at("step 2", []), progress=True)
    assert len(json.loads(log.read_text())["probes"]) == 2
    best, summary = convslim.auto_prune(model, digits, cfg, log_path=log, progress=False)
    return model, cfg, log, best, summary


def test_progressive_search_compounds_steps_within_the_epoch_budget_and_resumes(digits, tmp_path):
    model, cfg, log, best, summary = stopped_at_step_2_and_resumed(digits, tmp_path, "progressive")
    steps = json.loads(log.read_text())["probes"]
    assert summary["search_epochs"] == sum(s["epochs"] for s in steps) <= cfg.final_epochs
    assert summary["search_epochs"] > cfg.final_epochs - 2 * 0.5           # stopped when the next step would not fit
    flops, share, used, control = summary["base_flops"], 0.25, 0.0, 0.5
    for i, s in enumerate(steps):
        readings, start = s["readings"], s["start_val_acc"]
        control = 0.5 if i == 2 else control             # the resumed search reads its starting model again
        # each step starting from a new model first tunes that model the same 0.5 epoch: the paired reading
        assert s["epochs"] == 0.5 * len(readings) + control and len(readings) <= 3 and s["val_acc"] == readings[-1]
        for before in readings[:-1]:                     # more recovery only while over the budget,
            assert used + max(start - before, 0) > 3.0   # and only while improving
        assert all(a < b for a, b in zip(readings[:-2], readings[1:-1]))
        assert s["used_before"] == pytest.approx(used) and s["cost"] == pytest.approx(max(start - s["val_acc"], 0))
        assert s["share"] == share and (s["decision"] == "keep") == (used + s["cost"] <= 3.0 and s["flops"] < flops)
        if s["decision"] == "keep":
            assert s["flops"] <= (1 - share / 2) * flops       # each kept step removes its share of the current model
            flops, used, control = s["flops"], used + s["cost"], 0.5
        else:
            share, control = share / 2, 0.0                  # a failed step is undone and the step halved
    kept = [s for s in steps if s["decision"] == "keep"]
    assert kept and summary["flops"] == kept[-1]["flops"] and summary["pruned"]
    reloaded = convslim.load(log.with_name(log.name + ".candidate.pt"))
    assert convslim.count(reloaded, torch.randn(1, 1, 8, 8))["flops"] == summary["flops"]
    assert best(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_verified_search_judges_steps_verifies_within_the_epoch_budget_and_resumes(digits, tmp_path):
    """Steps are kept on their own cost, the last kept model is verified by a longer fine-tune, the
    search costs no more epochs than the final fine-tune, and a stop resumes to the same answer."""
    model, cfg, log, best, summary = stopped_at_step_2_and_resumed(digits, tmp_path, "verified")
    records = json.loads(log.read_text())["probes"]
    steps = [r for r in records if r["kind"] == "step"]
    assert summary["search_epochs"] == pytest.approx(sum(r["epochs"] for r in records))
    assert summary["search_epochs"] <= cfg.final_epochs + 1e-9
    assert sum(s["epochs"] for s in steps) <= cfg.final_epochs / 2 + 1e-9        # phase 1: half the budget
    share = 0.25
    for s in steps:
        assert s["share"] == pytest.approx(share)
        assert (s["decision"] == "keep") == (s["start_val_acc"] - s["val_acc"] <= 3.0)
        assert s["epochs"] == 0.5 * len(s["readings"]) and s["val_acc"] == s["readings"][-1]
        for before in s["readings"][:-1]:                   # more recovery only while over the budget
            assert s["start_val_acc"] - before > 3.0
        share = min(share * 1.5, 0.5) if s["decision"] == "keep" else share / 2
    kept = [s for s in steps if s["decision"] == "keep"]
    if kept:
        verify = records[-1]
        assert verify["kind"] == "verify" and summary["verifications"] == 1
        if verify["val_acc"] + 3.0 >= summary["base_val_acc"]:
            assert summary["flops"] == kept[-1]["flops"]
    again, summary2 = convslim.auto_prune(model, digits, cfg, log_path=log, progress=False)   # all done: no new work
    assert summary2["flops"] == summary["flops"] and len(json.loads(log.read_text())["probes"]) == len(records)
    assert best(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("search", [None, "verified"])
def test_the_default_search_is_progressive_and_step_reports_render(digits, tmp_path, capsys, search):
    base = tmp_path / "base.pt"
    convslim.save(copy.deepcopy(trained_model(digits)), base)
    out, report = tmp_path / "v.pt", tmp_path / "report"
    assert main(["auto", "--model", str(base), "--data", "digits", "--max-acc-loss", "5", "--probe-epochs", "0.5",
                 "--final-epochs", "1", "--batch-size", "64", "--out", str(out), "--report", str(report),
                 *(["--search", search] if search else [])]) == 0
    text = capsys.readouterr().out
    assert f"({search or 'progressive'} search, distilling from the original)" in text and out.exists()
    log = json.loads((tmp_path / "v.pt.search.json").read_text())
    assert log["header"]["search"] == (search or "progressive")
    page = (report / "report.md").read_text()
    assert "Search trajectory" in page and "| step |" in page
    if any(r["kind"] == "verify" for r in log["probes"]):
        assert "| verify |" in page


@pytest.mark.parametrize("search", ["progressive", "thesis"])
def test_distill_makes_every_fine_tune_of_the_search_learn_from_the_original(digits, search):
    """`--distill` (cfg.distill) without a teacher: the steps or probes and the final fine-tune all
    distil from the original, as it was before the search; none fine-tunes without it."""
    model = copy.deepcopy(trained_model(digits))
    original = copy.deepcopy(model.state_dict())
    calls = []

    def plain(m, epochs, resume=None):
        calls.append(("plain", epochs))

    def distil(m, epochs, teacher, resume=None):
        assert teacher is not model and all(torch.equal(teacher.state_dict()[k], v) for k, v in original.items())
        calls.append(("distil", epochs))

    own = convslim.Task.from_splits(digits, batch_size=64, device="cpu")
    task = convslim.Task(evaluate=own.evaluate, batches=own.batches, finetune=plain, teacher_finetune=distil,
                         bn_data=digits)
    cfg = convslim.SearchConfig(max_acc_loss=3.0, min_interval=0.25, probe_epochs=0.5, final_epochs=2, distill=True,
                                search=search, device="cpu")
    convslim.auto_prune(model, task, cfg, progress=False)
    assert {kind for kind, _ in calls} == {"distil"}
    assert 0.5 in {e for _, e in calls}                                # the search's own fine-tunes
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())


def test_distill_leaves_a_users_own_loop_without_a_distilling_one_as_it_is(digits):
    """Task.distilling needs a distilling loop: a user's plain loop is still the one called."""
    calls = []

    def mine(model, epochs):
        calls.append(epochs)

    own = convslim.Task.from_splits(digits, batch_size=64, device="cpu")
    task = convslim.Task(evaluate=own.evaluate, batches=own.batches, finetune=mine)
    assert task.distilling(copy.deepcopy(trained_model(digits))) is task
    kd = own.distilling(copy.deepcopy(trained_model(digits)))
    assert kd is not own and kd.finetune.resumable and kd.evaluate is own.evaluate
    task.tune(copy.deepcopy(trained_model(digits)), 0.5)
    assert calls == [0.5]
