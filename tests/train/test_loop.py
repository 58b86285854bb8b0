from __future__ import annotations

import copy

import pytest
import torch

from ferens.config import TrainConfig
from ferens.models.factory import create_member_model
from ferens.train.finetune import parameter_groups
from ferens.train.loop import build_optimizer


def _optimizer_before_timm(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """What build_optimizer built before it used timm's factory (every saved config trained
    with it, and every checkpoint holds its state)."""
    groups = parameter_groups(model, cfg.lr, cfg.weight_decay, cfg.backbone_lr_scale)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


@pytest.mark.parametrize("overrides", [
    {}, {"weight_decay": 0.0}, {"optimizer": "sgd"}, {"optimizer": "sgd", "weight_decay": 0.0,
                                                      "momentum": 0.5},
    {"backbone_lr_scale": 0.1}, {"optimizer": "sgd", "backbone_lr_scale": 0.3}])
def test_build_optimizer_trains_exactly_like_the_optimizer_ferens_always_built(overrides):
    """Same class, same groups in the same order with the same settings, bit-identical
    parameters after a few steps, and a checkpoint of the old optimizer loads into it."""
    cfg = TrainConfig(width=0.25, lr=0.01, epochs=2, **overrides)
    torch.manual_seed(0)
    ours = create_member_model("resnet18", width=0.25, num_classes=7)
    theirs = copy.deepcopy(ours)
    built, reference = build_optimizer(ours, cfg), _optimizer_before_timm(theirs, cfg)
    assert type(built) is type(reference)
    assert built.state_dict()["param_groups"] == reference.state_dict()["param_groups"]
    x = torch.randn(4, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 3, 6, 1])
    for model, optimizer in ((ours, built), (theirs, reference)):
        model.train()
        for _ in range(3):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    build_optimizer(copy.deepcopy(ours), cfg).load_state_dict(reference.state_dict())
