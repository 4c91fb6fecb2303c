"""Recipes: `--config FILE` (JSON or YAML) for every command, typed flags winning over it, and the
resolved settings in every --json output, which are themselves a recipe that repeats the run."""
import json

import pytest
import torch
import yaml

import convslim
from convslim.cli import build_parser, main

TRAIN = {"model": "digitsnet", "data": "digits", "epochs": 0.2, "batch-size": 64, "seed": 3, "quiet": True}
FLAGS = ["--model", "digitsnet", "--data", "digits", "--epochs", "0.2", "--batch-size", "64", "--seed", "3",
         "--quiet"]


def write(path, data):
    path.write_text(yaml.safe_dump(data) if path.suffix == ".yaml" else json.dumps(data))
    return str(path)


def train(tmp_path, name, *argv):
    out, log = tmp_path / f"{name}.pt", tmp_path / f"{name}.json"
    assert main(["train", *argv, "--out", str(out), "--json", str(log)]) == 0
    return convslim.load(out).state_dict(), json.loads(log.read_text())["settings"]


def test_every_command_takes_config():
    for name, sub in build_parser().commands.items():
        assert "--config" in sub._option_string_actions, name


def test_json_and_yaml_config_give_what_the_flags_give(tmp_path):
    flags, s_flags = train(tmp_path, "flags", *FLAGS)
    for suffix in (".json", ".yaml"):
        config = write(tmp_path / f"recipe{suffix}", {**TRAIN, "batch_size": 64})   # either spelling
        weights, s = train(tmp_path, suffix[1:], "--config", config)
        assert all(torch.equal(flags[k], weights[k]) for k in flags)
        strip = lambda d: {k: v for k, v in d.items() if k not in ("out", "json")}
        assert strip(s) == strip(s_flags)
    assert s_flags["command"] == "train" and s_flags["epochs"] == 0.2 and "config" not in s_flags


def test_flags_override_the_config_and_settings_show_the_result(tmp_path):
    config = write(tmp_path / "r.yaml", {**TRAIN, "lr": 0.5, "epochs": -1, "no-nesterov": True})
    _, s = train(tmp_path, "a", "--config", config, "--lr", "0.05", "--epoch", "0.2")   # a bad value, overridden
    assert s["lr"] == 0.05 and s["epochs"] == 0.2                 # typed flags, the second abbreviated
    assert s["no_nesterov"] is True and s["seed"] == 3 and s["model"] == "digitsnet"   # from the config


def test_sections_per_command_and_settings_as_a_recipe(tmp_path, capsys):
    config = write(tmp_path / "r.yaml", {"seed": 1, "max-acc-loss": 2.0, "quiet": True,
                                         "train": {**TRAIN, "seed": 2}, "profile": {"batches": [1, 2]}})
    _, s = train(tmp_path, "m", "--config", config)
    assert s["seed"] == 2 and "max_acc_loss" not in s             # the section wins; auto's key is left to auto
    p = tmp_path / "p.json"
    assert main(["profile", "--model", str(tmp_path / "m.pt"), "--config", config, "--no-onnx", "--repeats", "1",
                 "--json", str(p)]) == 0
    s = json.loads(p.read_text())["settings"]
    assert s["seed"] == 1 and s["batches"] == [1, 2] and s["command"] == "profile"
    recipe = write(tmp_path / "again.json", s)                    # the settings repeat the run
    assert main(["profile", "--config", recipe]) == 0
    assert json.loads(p.read_text())["settings"] == s


def test_a_config_rule_gives_way_to_a_typed_rival(tmp_path):
    m = tmp_path / "m.pt"
    assert main(["train", *FLAGS, "--out", str(m)]) == 0
    config = write(tmp_path / "r.json", {"model": str(m), "data": "digits", "cr": 0.8})
    assert main(["prune", "--config", config, "--ratio", "0.25", "--out", str(tmp_path / "p.pt"),
                 "--json", str(tmp_path / "p.json")]) == 0
    s = json.loads((tmp_path / "p.json").read_text())["settings"]
    assert s["ratio"] == 0.25 and s["cr"] is None and s["ignore"] == []
    assert main(["prune", "--config", write(tmp_path / "again.yaml", s)]) == 0   # and repeat it
    assert json.loads((tmp_path / "p.json").read_text())["settings"] == s


@pytest.mark.parametrize("data, message", [
    ({**TRAIN, "bogus": 1}, "no option 'bogus'"),
    ({**TRAIN, "cr": 0.5}, "no option 'cr'"),                     # prune's, not train's
    ({**TRAIN, "epochs": -1}, "set in --config"),
    ({**TRAIN, "schedule": "bogus"}, "invalid choice"),
    ({**TRAIN, "quiet": "yes please"}, "true or false"),
    ({**TRAIN, "lr": {"a": 1}}, "takes a value"),
    ({**TRAIN, "command": "auto"}, "for convslim auto"),
    ({"train": {"max-acc-loss": 1}}, "no option 'max-acc-loss'"),
    ([1, 2], "mapping"),
    ("not: [json", "not YAML or JSON"),
    ("{not json", "not JSON"),
    (None, "not found"),
])
def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys, data, message):
    suffix = ".json" if data == "{not json" else ".yaml"
    config = tmp_path / f"r{suffix}"
    if isinstance(data, str):
        config.write_text(data)
    elif data is not None:
        write(config, data)
    before = set(tmp_path.iterdir())
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "o.pt"),
                 "--json", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convslim: error:") and len(err.strip().splitlines()) == 1 and message in err, err
    assert set(tmp_path.iterdir()) == before
