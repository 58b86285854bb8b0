"""timm ResNets adapted to 48x48 grayscale faces: 1 input channel, K classes (FER2013: 7), a
choice of stem.

    >>> from ferens.models.factory import create_member_model
    >>> model = create_member_model("resnet18", stem="s2", width=0.5)
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from ferens.classes import NUM_CLASSES
from ferens.config import STEMS
from ferens.errors import FerensError

# How each stem of ferens.config.STEMS changes the stock ResNet: (keep the max-pool, stride of
# the first conv).
STEM_LAYOUTS = {"default": (True, 2), "s2": (False, 2), "s1": (False, 1)}
if set(STEM_LAYOUTS) != set(STEMS):
    raise ImportError(f"ferens.models.factory implements the stems {sorted(STEM_LAYOUTS)} but "
                      f"ferens.config declares {sorted(STEMS)}")


def check_model_name(name: str) -> None:
    """Refuse a model that is not a ResNet of timm's ``resnet`` module (the one architecture
    whose width and stem ferens knows how to change): ``resnetv2_50`` or ``resnest14d`` share
    the prefix but are other classes with other arguments."""
    if not name.startswith(("resnet", "resnext", "seresnet", "wide_resnet")):
        raise FerensError(f"model {name!r} is not a timm ResNet (try resnet18, resnet34, resnet50)")
    if name not in timm.list_models(module="resnet"):
        other = " (it is in timm, but not a timm.models.resnet ResNet)" if name in (
            timm.list_models()) else ""
        raise FerensError(f"unknown model {name!r}{other}; ferens builds the ResNets of "
                          "timm.models.resnet: resnet18, resnet34, resnet50, resnet18d, "
                          "resnext50_32x4d, seresnet50, wide_resnet50_2, ...")


def create_member_model(name: str = "resnet18", stem: str = "default", width: float = 1.0,
                        pretrained: str | Path | None = None, drop_rate: float = 0.0,
                        num_classes: int = NUM_CLASSES) -> nn.Module:
    """Build a timm ResNet by name for 1-channel input; optionally with pretrained weights:
    a local file, or ``timm`` / ``timm:TAG`` for timm's published ones
    (ferens.models.pretrained)."""
    check_model_name(name)
    if stem not in STEMS:
        raise FerensError(f"unknown stem {stem!r}; choose one of {list(STEMS)}")
    if width <= 0:
        raise FerensError(f"width must be positive, got {width}")
    kwargs = {}
    # width scales the four stages; timm reads stem_width only for deep stems (resnet18d, ...),
    # so a plain ResNet's stem keeps 64 channels (saved models depend on this: keep it)
    if width != 1.0:
        kwargs["channels"] = tuple(max(8, round(c * width)) for c in (64, 128, 256, 512))
        kwargs["stem_width"] = max(8, round(64 * width))
        if "d" in name.removeprefix("resnet").lstrip("0123456789"):
            kwargs["stem_width"] = max(8, round(32 * width))
    from ferens.models.pretrained import create_timm_pretrained, is_timm_spec

    if is_timm_spec(pretrained):
        if kwargs:
            raise FerensError(f"--pretrained {pretrained}: timm publishes weights for the "
                              f"full-width {name} only; use --width 1 (got {width})")
        model = create_timm_pretrained(name, pretrained, num_classes, drop_rate)
        pretrained = None
    else:
        try:
            model = timm.create_model(name, pretrained=False, num_classes=num_classes,
                                      in_chans=1, drop_rate=drop_rate, **kwargs)
        except (TypeError, ValueError) as exc:  # an architecture refusing these arguments
            raise FerensError(f"model {name!r} cannot be built with width={width} "
                              f"({type(exc).__name__}: {exc})") from None
    if pretrained:
        load_pretrained(model, pretrained)
    _apply_stem(model, stem)
    return model


def _apply_stem(model: nn.Module, stem: str) -> None:
    keep_maxpool, stride = STEM_LAYOUTS[stem]
    if not keep_maxpool:
        model.maxpool = nn.Identity()
    if stride != 2:
        first = model.conv1[0] if isinstance(model.conv1, nn.Sequential) else model.conv1
        first.stride = (stride, stride)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a plain torch file (loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FerensError(f"{path}: pretrained weights file not found (ferens never downloads)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FerensError(f"{path}: cannot read weights ({exc})") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FerensError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Load local weights, adapting a 3-channel first conv to 1 channel and skipping the head."""
    from timm.models import adapt_input_conv

    state = read_weights(path)
    own = model.state_dict()
    first_conv = next(k for k in own if k.endswith("weight") and own[k].ndim == 4)
    if first_conv in state and state[first_conv].shape[1] != own[first_conv].shape[1]:
        state[first_conv] = adapt_input_conv(own[first_conv].shape[1], state[first_conv])
    head = model.get_classifier()
    head_keys = {k for k in own if k.split(".")[0] == _head_name(model, head)}
    state = {k: v for k, v in state.items() if k not in head_keys or v.shape == own[k].shape}
    missing = sorted(set(own) - set(state) - head_keys)
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label} {keys[:3]}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
            for label, keys in (("missing", missing), ("unexpected", unexpected),
                                ("shape mismatch", wrong)) if keys)
        raise FerensError(f"{path}: weights do not fit this architecture: {detail}")
    model.load_state_dict(state, strict=False)


def _head_name(model: nn.Module, head: nn.Module) -> str:
    return next(name for name, mod in model.named_children() if mod is head)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
