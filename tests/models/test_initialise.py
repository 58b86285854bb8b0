"""Issue 26, part 2: `--init` starts a member from a ferens model (a run, a bundle, a bundle's
member, or the shipped model), keeping the head when the classes match and replacing it when
they do not."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from ferens.config import TrainConfig
from ferens.deploy.shipped import SHIPPED_BUNDLE
from ferens.errors import FerensError
from ferens.models.factory import create_member_model
from ferens.models.initialise import apply_init, init_architecture, resolve_init

SHIPPED_WEIGHTS = SHIPPED_BUNDLE / "members" / "0" / "model.safetensors"


def _shipped() -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(str(SHIPPED_WEIGHTS)).items()}


def _train(args, tmp_path, monkeypatch, capsys, name="m"):
    code, out, err = run_cli(["train-member", "--name", name, "--out-dir", tmp_path / "runs",
                              "--epochs", "1", "--threads", "1", "--batch-size", "16",
                              "--tta", "none", "--quiet", *args], monkeypatch, capsys)
    return code, out, err, tmp_path / "runs" / name


def test_init_default_takes_the_shipped_architecture_and_every_weight(tiny_csv, tmp_path,
                                                                      monkeypatch, capsys):
    code, _, err, run = _train(["--data", tiny_csv, "--init", "default", "--lr", "0"],
                               tmp_path, monkeypatch, capsys)
    assert code == 0, err
    cfg = TrainConfig.load(run / "config.json")
    assert (cfg.model, cfg.width, cfg.stem, cfg.input_size, cfg.init) == (
        "resnet18", 0.5, "default", 48, "default")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["init"]["head"] == "kept"
    assert "the shipped model member 0" in summary["init"]["from"]
    best, shipped = load_file(str(run / "best.safetensors")), _shipped()
    for key in ("conv1.weight", "layer3.0.conv2.weight", "fc.weight", "fc.bias"):
        assert torch.equal(best[key], shipped[key]), key  # lr 0: nothing moved


def test_other_classes_replace_the_head_and_keep_the_backbone():
    cfg = TrainConfig(width=0.5, init="default", classes=["calm", "joy", "rage"])
    torch.manual_seed(0)
    model = create_member_model("resnet18", width=0.5, num_classes=3)
    fresh_head = model.fc.weight.detach().clone()
    note = apply_init(model, resolve_init("default"), cfg)
    assert note["head"] == "replaced" and "predicts 7 classes" in note["note"]
    assert "this data has 3 ['calm', 'joy', 'rage']" in note["note"]
    own, shipped = model.state_dict(), _shipped()
    assert torch.equal(own["layer4.1.conv2.weight"], shipped["layer4.1.conv2.weight"])
    assert torch.equal(model.fc.weight, fresh_head) and model.fc.weight.shape == (3, 256)
    reordered = TrainConfig(width=0.5, init="default",  # same names, other order: replaced too
                            classes=["Disgust", "Angry", "Fear", "Happy", "Sad", "Surprise",
                                     "Neutral"])
    model = create_member_model("resnet18", width=0.5)
    assert apply_init(model, resolve_init("default"), reordered)["head"] == "replaced"


def test_a_different_architecture_or_input_size_is_one_line(tiny_csv, tmp_path, monkeypatch,
                                                           capsys):
    for extra, text in ((["--model", "resnet34"], "but this run builds a resnet34 at width 0.5"),
                        (["--width", "1"], "but this run builds a resnet18 at width 1.0"),
                        (["--set", "input_size=64"], "on 64 px faces")):
        code, _, err, run = _train(["--data", tiny_csv, "--init", "default", *extra],
                                   tmp_path, monkeypatch, capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert "is a resnet18 at width 0.5 on 48 px faces" in err and text in err, err
        assert not run.exists()


def test_init_from_a_run_a_bundle_and_a_bundle_member(tiny_csv, tmp_path, monkeypatch, capsys):
    runs = []
    for name, seed in (("a", "0"), ("b", "1")):
        code, _, err, run = _train(["--data", tiny_csv, "--width", "0.25", "--seed", seed],
                                   tmp_path, monkeypatch, capsys, name=name)
        assert code == 0, err
        runs.append(run)
    assert init_architecture(str(runs[0]))["width"] == 0.25
    code, _, err, child = _train(["--data", tiny_csv, "--init", runs[1], "--lr", "0"],
                                 tmp_path, monkeypatch, capsys, name="child")
    assert code == 0, err
    assert torch.equal(load_file(str(child / "best.safetensors"))["layer2.0.conv1.weight"],
                       load_file(str(runs[1] / "best.safetensors"))["layer2.0.conv1.weight"])
    assert run_cli(["ensemble", *runs, "--out", tmp_path / "ens"], monkeypatch, capsys)[0] == 0
    assert run_cli(["export", tmp_path / "ens", "--out", tmp_path / "ens.ferens"],
                   monkeypatch, capsys)[0] == 0
    with pytest.raises(FerensError, match=r"holds 2 members \(a, b\).*ens.ferens/members/<i>"):
        resolve_init(str(tmp_path / "ens.ferens"))
    member = resolve_init(str(tmp_path / "ens.ferens" / "members" / "1"))
    assert member.config.name == "b" and "member 1 (b)" in member.where
    assert torch.equal(member.state["layer2.0.conv1.weight"],
                       load_file(str(runs[1] / "best.safetensors"))["layer2.0.conv1.weight"])
    with pytest.raises(FerensError, match="is an ensemble run; --init starts from one member"):
        resolve_init(str(tmp_path / "ens"))
    with pytest.raises(FerensError, match="not found; give a train-member run folder"):
        resolve_init(str(tmp_path / "nowhere"))
    code, _, err = run_cli(["train-member", "--name", "x", "--data", tiny_csv, "--init",
                            tmp_path / "ens.ferens", "--out-dir", tmp_path / "runs"],
                           monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "holds 2 members" in err
