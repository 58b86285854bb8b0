"""Albumentations pipelines by name (``none``, ``light``, ``strong``) or from a serialized dict.

``torch-light`` and ``torch-strong`` are the same recipes computed in torch on the training
device (``ferens.data.torch_augment``). albumentations is imported only when a pipeline is built,
so a member trained with a torch recipe runs where albumentations is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ferens.config import AUGMENTATIONS, TORCH_AUGMENTATIONS
from ferens.errors import FerensError

if TYPE_CHECKING:
    import albumentations


def _albumentations():
    import albumentations

    return albumentations


def _light() -> list:
    A = _albumentations()
    return [A.HorizontalFlip(p=0.5),
            A.Affine(translate_percent=(-0.05, 0.05), scale=(0.95, 1.05), rotate=(-10, 10),
                     border_mode=0, p=0.5)]


def _strong() -> list:
    A = _albumentations()
    return [A.HorizontalFlip(p=0.5),
            A.Affine(translate_percent=(-0.1, 0.1), scale=(0.85, 1.15), rotate=(-15, 15),
                     border_mode=0, p=0.8),
            A.RandomBrightnessContrast(brightness_limit=0.3, contrast_limit=0.3, p=0.5),
            A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.15, 0.3),
                            hole_width_range=(0.15, 0.3), fill=0, p=0.5)]


# The transforms of each named albumentations pipeline (the names are declared in ferens.config;
# the torch-* recipes are ferens.data.torch_augment's).
PIPELINES = {"none": list, "light": _light, "strong": _strong}
if set(PIPELINES) | set(TORCH_AUGMENTATIONS) != set(AUGMENTATIONS):
    raise ImportError(f"ferens.data.augment implements the pipelines {sorted(PIPELINES)} (and "
                      f"ferens.data.torch_augment {sorted(TORCH_AUGMENTATIONS)}) but ferens.config "
                      f"declares {sorted(AUGMENTATIONS)}")


def _named(name: str) -> list:
    if name in TORCH_AUGMENTATIONS:
        raise FerensError(f"augment={name!r} runs in torch on whole batches "
                          "(ferens.data.torch_augment), not as an albumentations pipeline")
    if name not in PIPELINES:
        raise FerensError(f"unknown augmentation {name!r}; choose one of {list(AUGMENTATIONS)} "
                          "or give augment_override (an albumentations to_dict() pipeline)")
    return PIPELINES[name]()


def train_pipeline(name: str, input_size: int = 48, crop_size: int = 0,
                   override: dict | None = None, seed: int = 0,
                   flip: bool = True) -> albumentations.Compose:
    """Training augmentation: resize, the named (or overriding) transforms, then random crop.

    ``flip=False`` leaves out the named pipelines' random horizontal flip (the caller flips
    deterministically instead, e.g. alternating epochs)."""
    A = _albumentations()
    if override:
        try:
            body = [A.from_dict(override)]
        except Exception as exc:
            raise FerensError(
                f"augment_override is not an albumentations pipeline ({exc})") from None
    else:
        body = _named(name)
        if not flip:
            body = [t for t in body if not isinstance(t, A.HorizontalFlip)]
    steps = _resize(input_size) + body
    if crop_size:
        steps.append(A.RandomCrop(crop_size, crop_size))
    return A.Compose(steps, seed=seed)


def check_train_pipeline(name: str, input_size: int = 48, crop_size: int = 0,
                         override: dict | None = None, flip: bool = True) -> None:
    """Build the training pipeline and run it on a few faces, so a pipeline that fails only
    when applied (a bad argument value, an output of the wrong size or type) is refused while
    the config is checked, before any run folder is written."""
    pipeline = train_pipeline(name, input_size, crop_size, override, flip=flip)
    side = crop_size or input_size
    faces = [np.zeros((48, 48), np.uint8),
             np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)]
    for seed, face in enumerate(faces * 2):
        pipeline.set_random_seed(seed)
        try:
            out = pipeline(image=face)["image"]
        except Exception as exc:
            raise FerensError(f"augment_override fails on a 48x48 face "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None
        if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != (side, side):
            got = (f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray)
                   else type(out).__name__)
            raise FerensError(f"augment_override turns a 48x48 face into {got}; training needs "
                              f"uint8 ({side}, {side}) images (the resize and crop are added "
                              "by ferens)")


def eval_pipeline(input_size: int = 48, crop_size: int = 0) -> albumentations.Compose:
    """Deterministic evaluation transform matching the training geometry."""
    A = _albumentations()
    steps = _resize(input_size)
    if crop_size:
        steps.append(A.CenterCrop(crop_size, crop_size))
    return A.Compose(steps)


def _resize(input_size: int) -> list:
    return [] if input_size == 48 else [_albumentations().Resize(input_size, input_size)]


def apply(pipeline: albumentations.Compose, images: np.ndarray) -> np.ndarray:
    """Transform a batch (N,H,W) uint8 image by image; identity pipelines cost nothing."""
    if not pipeline.transforms:
        return images
    return np.stack([pipeline(image=img)["image"] for img in images])
