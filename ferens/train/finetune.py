"""Fine-tuning: a lower learning rate for the backbone than for the head, and a frozen backbone
for the first epochs.

The *head* is the classifier timm's ``get_classifier()`` returns (``fc`` for a ResNet); the
*backbone* is everything else. ``--backbone-lr-scale S`` gives the backbone ``S * lr``
through its own optimizer parameter groups, so the warm-up and cosine schedule (a
``LambdaLR`` that scales each group's own starting lr) move both together.
``--freeze-backbone-epochs N`` trains the head alone for epochs 1..N: the backbone's
parameters get no gradient (the optimizer skips them, weight decay included) and its
BatchNorm layers keep their running statistics (eval mode).

timm's ``param_groups_layer_decay`` also makes per-layer groups, but it records the scale as
``lr_scale``, which only timm's own schedulers apply; ferens' schedule reads each group's
``lr``, so the groups are built here with their ``lr`` set.
"""

from __future__ import annotations

from torch import nn


def head_module(model: nn.Module) -> nn.Module:
    """The classifier head of a timm model."""
    return model.get_classifier()


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, head) parameters, each in the model's own order."""
    head = {id(p) for p in head_module(model).parameters()}
    params = list(model.parameters())
    return [p for p in params if id(p) not in head], [p for p in params if id(p) in head]


def parameter_groups(model: nn.Module, lr: float, weight_decay: float,
                     backbone_lr_scale: float = 1.0) -> list[dict]:
    """Optimizer groups: weight decay on weights (ndim > 1) only; with a backbone scale other
    than 1, the head's groups first (lr, the one metrics.csv logs), then the backbone's at
    ``backbone_lr_scale * lr``. With scale 1: the two groups ferens always used."""
    def decay_groups(params: list[nn.Parameter], group_lr: float) -> list[dict]:
        return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay,
                 "lr": group_lr},
                {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0,
                 "lr": group_lr}]

    if backbone_lr_scale == 1.0:
        return decay_groups(list(model.parameters()), lr)
    backbone, head = split_parameters(model)
    return decay_groups(head, lr) + decay_groups(backbone, lr * backbone_lr_scale)


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (no gradients, BatchNorm statistics kept) or release the backbone; call after
    ``model.train()``, as that puts every module back in training mode."""
    head = head_module(model)
    head_params = {id(p) for p in head.parameters()}
    for p in model.parameters():
        if id(p) not in head_params:
            p.requires_grad_(not frozen)
    if frozen:
        head_modules = {id(m) for m in head.modules()}
        for m in model.modules():
            if id(m) not in head_modules and m is not model:
                m.eval()


def backbone_frozen(epoch: int, freeze_backbone_epochs: int) -> bool:
    """Whether epoch ``epoch`` (1-based) trains the head alone."""
    return epoch <= freeze_backbone_epochs
