"""Issue 26, part 1: timm's published weights by name from a local cache (never downloaded),
the offline error, a lower backbone learning rate and a frozen backbone."""

from __future__ import annotations

import socket

import pytest
import timm
import torch
from conftest import run_cli
from safetensors.torch import load_file, save_file

from ferens.config import TrainConfig
from ferens.errors import FerensError
from ferens.models.factory import create_member_model
from ferens.train.finetune import parameter_groups, split_parameters
from ferens.train.loop import build_optimizer, cosine_with_warmup
from ferens.train.member import train_member

ARCH = "resnet18"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path):
    """Every cache lives in tmp_path and any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("ferens tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-empty"))


def _source_weights() -> dict[str, torch.Tensor]:
    """What timm publishes for resnet18: a 3-channel, 1000-class state dict (random here)."""
    torch.manual_seed(123)
    model = timm.create_model(ARCH, pretrained=False)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _hf_cache(root, tag: str, state: dict) -> None:
    """The Hugging Face hub cache as `hf download timm/resnet18.TAG` leaves it."""
    repo = root / f"models--timm--{ARCH}.{tag}"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    save_file(state, str(snapshot / "model.safetensors"))


def test_timm_weights_load_from_the_hf_cache_through_timm(tmp_path, monkeypatch):
    state = _source_weights()
    _hf_cache(tmp_path / "hf", "a1_in1k", state)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    for spec in ("timm", "timm:a1_in1k", "timm:resnet18.a1_in1k"):  # timm = its default tag
        model = create_member_model(ARCH, pretrained=spec, num_classes=3)
        own = model.state_dict()
        # timm's own adaptation: the RGB first conv summed to one channel, the head replaced
        assert torch.allclose(own["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
        assert torch.equal(own["layer3.1.conv2.weight"], state["layer3.1.conv2.weight"])
        assert torch.equal(own["bn1.running_var"], state["bn1.running_var"])
        assert own["fc.weight"].shape == (3, 512)
    fresh = create_member_model(ARCH, num_classes=3)
    assert not torch.equal(fresh.state_dict()["layer3.1.conv2.weight"],
                           state["layer3.1.conv2.weight"])


def test_timm_weights_from_the_old_torch_hub_cache(tmp_path, monkeypatch):
    state = _source_weights()
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / "resnet18-f37072fd.pth")  # timm's tv_in1k URL's name
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    model = create_member_model(ARCH, pretrained="timm:tv_in1k", num_classes=7)
    assert torch.equal(model.state_dict()["layer4.0.conv1.weight"],
                       state["layer4.0.conv1.weight"])


def test_offline_without_a_copy_is_one_line_naming_where_it_looked(tmp_path, monkeypatch,
                                                                  capsys, tiny_csv):
    with pytest.raises(FerensError, match="not on this machine") as err:
        create_member_model(ARCH, pretrained="timm:a1_in1k")
    text = str(err.value)
    assert str(tmp_path / "hf-empty" / "models--timm--resnet18.a1_in1k") in text
    assert "hf download timm/resnet18.a1_in1k" in text and "--pretrained PATH" in text
    code, _, err_text = run_cli(["train-member", "--name", "p", "--data", tiny_csv,
                                 "--out-dir", tmp_path / "runs", "--pretrained", "timm",
                                 "--epochs", "1", "--quiet"], monkeypatch, capsys)
    assert code == 2 and err_text.count("\n") == 1, err_text
    assert err_text.startswith("ferens: error: --pretrained timm: timm's weights "
                               "resnet18.a1_in1k are not on this machine")
    assert not (tmp_path / "runs").exists()


def test_bad_timm_specs_are_refused_before_training():
    from ferens.train.member import check_trainable

    # the tag needs timm, so train_member's check_trainable refuses it (ferens.config is torch-free)
    with pytest.raises(FerensError, match="timm has no weights 'resnet18.nope'.*a1_in1k"):
        check_trainable(TrainConfig(pretrained="timm:nope"))
    with pytest.raises(FerensError, match="full-width resnet18 only"):
        TrainConfig(pretrained="timm", width=0.5)
    with pytest.raises(FerensError, match="not both"):
        TrainConfig(pretrained="timm", init="default")


def test_a_local_weights_file_still_works(tmp_path):
    state = _source_weights()
    save_file(state, str(tmp_path / "w.safetensors"))
    model = create_member_model(ARCH, pretrained=tmp_path / "w.safetensors")
    assert torch.equal(model.state_dict()["layer2.0.conv1.weight"], state["layer2.0.conv1.weight"])


def test_backbone_lr_scale_gives_the_backbone_its_own_groups():
    model = create_member_model(ARCH, width=0.25, num_classes=3)
    cfg = TrainConfig(width=0.25, lr=0.01, backbone_lr_scale=0.1, epochs=2)
    optimizer = build_optimizer(model, cfg)
    backbone, head = split_parameters(model)
    head_ids = {id(p) for p in head}
    for group in optimizer.param_groups:
        in_head = {id(p) in head_ids for p in group["params"]}
        assert len(in_head) == 1
        assert group["lr"] == pytest.approx(0.01 if in_head == {True} else 0.001)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    scheduler = cosine_with_warmup(optimizer, 0, 10)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    lrs = {g["lr"] for g in optimizer.param_groups}
    assert len(lrs) == 2 and max(lrs) == pytest.approx(10 * min(lrs))  # the schedule keeps it
    assert optimizer.param_groups[0]["lr"] == max(lrs)  # metrics.csv logs the head's lr
    plain = parameter_groups(model, 0.01, 0.05)  # scale 1: the two groups as before
    assert [len(g["params"]) for g in plain] == [len([p for p in model.parameters()
                                                      if p.ndim > 1]),
                                                 len([p for p in model.parameters()
                                                      if p.ndim <= 1])]


def _small_weights(path) -> dict[str, torch.Tensor]:
    """A quarter-width member's weights saved as a local pretrained file (fast to train)."""
    torch.manual_seed(7)
    state = {k: v.contiguous() for k, v in
             create_member_model(ARCH, width=0.25).state_dict().items()}
    save_file(state, str(path))
    return state


def _frozen_for_one_epoch(tiny_csv, tmp_path, name: str, epochs: int) -> TrainConfig:
    """A quarter-width member from the local weights `_small_weights` wrote, its backbone
    frozen for the first epoch."""
    return TrainConfig(name=name, out_dir=str(tmp_path / "runs"), data=str(tiny_csv),
                       pretrained=str(tmp_path / "w.safetensors"), width=0.25, epochs=epochs,
                       batch_size=16, threads=1, freeze_backbone_epochs=1, tta="none")


def test_a_frozen_backbone_changes_only_the_head(tiny_csv, tmp_path):
    start = _small_weights(tmp_path / "w.safetensors")
    cfg = _frozen_for_one_epoch(tiny_csv, tmp_path, "frozen", epochs=1)
    train_member(cfg, show_progress=False)
    best = load_file(str(cfg.run_dir / "best.safetensors"))
    for key in ("conv1.weight", "layer4.1.conv2.weight", "layer1.0.bn1.running_mean",
                "bn1.running_var", "layer2.0.bn2.weight"):
        assert torch.equal(best[key], start[key]), key
    assert not torch.equal(best["fc.weight"], start["fc.weight"])


def test_after_the_frozen_epochs_the_backbone_trains(tiny_csv, tmp_path):
    state = _small_weights(tmp_path / "w.safetensors")
    cfg = _frozen_for_one_epoch(tiny_csv, tmp_path, "thaw", epochs=2)
    train_member(cfg, show_progress=False)
    last = load_file(str(cfg.run_dir / "checkpoint" / "epoch-2" / "model.safetensors"))
    assert not torch.equal(last["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    with pytest.raises(FerensError, match="freeze_backbone_epochs=3 is more than epochs=2"):
        TrainConfig(epochs=2, freeze_backbone_epochs=3)
