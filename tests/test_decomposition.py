"""Low-rank decomposition: exactness at full rank, predicted sizes, the energy rule, save/load."""
import pytest
import torch
from torch import nn

import convslim
from conftest import on
from convslim.checkpoint import record_of
from convslim.decomposition import LowRank, auto_decompose, decompose, energy_rank
from convslim.decomposition import cp, svd, tucker
from convslim.errors import ConvslimError
from convslim.pruning import remove_channels
from convslim.budget import SearchConfig


def small(name="digits_resnet"):
    return convslim.build_model(name, num_classes=10, in_channels=1, input_shape=[1, 8, 8]).eval()


def n_params(mods):
    return sum(p.numel() for m in mods for p in m.parameters())


@pytest.mark.parametrize("energy, rank", [(0.5, 1), (9 / 14, 1), (0.65, 2), (13 / 14, 2), (0.93, 3), (1.0, 3)])
def test_energy_rule_picks_smallest_rank(energy, rank):
    assert energy_rank(torch.tensor([1.0, 3.0, 2.0]), energy) == rank     # shares 9/14, 4/14, 1/14


def test_energy_out_of_range():
    with pytest.raises(ConvslimError, match="energy"):
        energy_rank(torch.ones(3), 0)


def test_svd_full_rank_is_exact_and_rank_r_has_predicted_size():
    torch.manual_seed(0)
    lin, conv = nn.Linear(12, 7), nn.Conv2d(5, 6, 3, stride=2, padding=1, bias=True)
    x, xc = torch.randn(4, 12), torch.randn(2, 5, 9, 9)
    full = nn.Sequential(*svd.factorize(lin, [7]))
    assert torch.allclose(full(x), lin(x), atol=1e-5)
    fullc = nn.Sequential(*svd.factorize(conv, [6]))
    assert torch.allclose(fullc(xc), conv(xc), atol=1e-5)
    assert n_params(svd.factorize(lin, [3])) == 3 * (12 + 7) + 7
    assert n_params(svd.factorize(conv, [4])) == 4 * 5 * 9 + 4 * 6 + 6


def test_tucker2_shapes_and_exact_low_rank():
    g = torch.Generator().manual_seed(0)
    core, u, v = torch.randn(4, 3, 3, 3, generator=g), torch.randn(8, 4, generator=g), torch.randn(6, 3, generator=g)
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("pqhw,op,iq->oihw", core, u, v))
    layers = tucker.factorize(conv, [4, 3])
    assert [tuple(m.weight.shape) for m in layers] == [(3, 6, 1, 1), (4, 3, 3, 3), (8, 4, 1, 1)]
    assert layers[1].stride == (2, 2) and layers[2].bias is not None
    x = torch.randn(2, 6, 9, 9)
    assert torch.allclose(nn.Sequential(*layers)(x), conv(x), atol=1e-4)
    assert tucker.ranks_for(conv, 1.0) == [4, 3]


def test_cp_shapes_and_exact_low_rank():
    g = torch.Generator().manual_seed(0)
    a, b, c, d = (torch.randn(n, 3, generator=g) for n in (8, 6, 3, 5))
    conv = nn.Conv2d(6, 8, (3, 5), stride=(2, 1), padding=(1, 2), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("or,ir,hr,wr->oihw", a, b, c, d))
    layers = cp.factorize(conv, [3])
    assert [tuple(m.weight.shape) for m in layers] == [(3, 6, 1, 1), (3, 1, 3, 1), (3, 1, 1, 5), (8, 3, 1, 1)]
    assert layers[1].groups == layers[2].groups == 3
    x = torch.randn(2, 6, 9, 9)
    assert torch.allclose(nn.Sequential(*layers)(x), conv(x), atol=1e-3)


def test_full_energy_leaves_layers_alone():
    model = small()
    slim, rows = decompose(model, "tucker", 1.0)
    assert rows and not any(r["apply"] for r in rows)            # FLOPs would not drop
    assert not any(isinstance(m, LowRank) for m in slim.modules())


@pytest.mark.parametrize("method", ["svd", "tucker", "cp"])
def test_decomposed_model_saves_and_reloads(tmp_path, method):
    model = small()
    slim, rows = decompose(model, method, 0.6)
    assert any(r["apply"] for r in rows)
    assert convslim.count(slim, torch.zeros(1, 1, 8, 8))["flops"] < convslim.count(model, torch.zeros(1, 1, 8, 8))["flops"]
    assert not any(isinstance(m, LowRank) for m in model.modules())     # original untouched
    path = convslim.save(slim, tmp_path / "d.pt")
    assert torch.load(path, weights_only=True)["edits"][0]["op"] == "decompose"
    again = convslim.load(path)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(again(x), slim(x))


def test_pruned_then_decomposed_then_pruned_replays_in_order(tmp_path):
    model = small()
    x1 = torch.randn(1, 1, 8, 8)
    record_of(model).history += remove_channels(model, {"body.0.conv1": [0, 3]}, x1)
    slim, _ = decompose(model, "tucker", 0.7, layers=["body.1.conv2"])
    record_of(slim).history += remove_channels(slim, {"body.2.conv1": [1]}, x1)
    again = convslim.load(convslim.save(slim, tmp_path / "m.pt"))
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(again(x), slim(x))


def test_auto_search_runs_and_resumes(digits, tmp_path, device):
    model = small("digitsnet")
    convslim.fit(model, digits, convslim.TrainConfig(epochs=1, batch_size=64, lr=0.05, progress=False, device=device),
                 validate=False)
    cfg = SearchConfig(max_acc_loss=99, min_interval=0.3, probe_epochs=0, final_epochs=0, bn_batches=2, device=device)
    log = tmp_path / "s.json"
    best, summary = auto_decompose(model, digits, "svd", cfg, log_path=log, progress=False)
    assert summary["probes"] == 2 and summary["chosen_energy"] == 0.25      # budget 99 points: all kept
    assert summary["flops"] < summary["base_flops"]
    assert on(best, device) and any(isinstance(m, LowRank) for m in best.modules())
    assert best(torch.randn(2, 1, 8, 8, device=device)).shape == (2, 10)
    _, again = auto_decompose(model, digits, "svd", cfg, log_path=log, progress=False, echo=lambda *a: None)
    assert again["probes"] == 2                                              # resumed, nothing redone
