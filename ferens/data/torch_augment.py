"""The light and strong recipes in plain torch, on whole batches, on the training device.

``augment = "torch-strong"`` (or ``"torch-light"``) trains with the transforms of the named
albumentations recipe (``ferens.data.augment``): random horizontal flip, a small affine (rotation,
scale, translation; zero border), brightness/contrast, one erased rectangle, then the random
crop, but computed by ``torch.nn.functional.grid_sample`` over a whole batch where the images
already are. With the training images resident on a GPU (the whole of FER2013 is 83 MB), an
epoch needs no loader workers and no host-to-device image copies.

Every random choice of a training image comes from a counter-based hash (splitmix64) of its
per-sample seed ``ferens.data.loader.sample_seed(seed, epoch, index)``, computed with numpy on the
host once per epoch: a batch is augmented identically on any device, in any batch, after any
resume. The pixels are not bit-identical across devices (bilinear sampling in float32), and
the recipe is not bit-identical to its albumentations twin: it is its own recipe.

    params = epoch_parameters(RECIPES["torch-strong"], seeds, input_size=48, crop_size=44)
    x = augment_batch(images_uint8_on_device[idx], params_on_device[rows], 44)  # (B,1,44,44)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

SOURCE_SIDE = 48
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
STREAMS = 16  # independent uniforms per sample, one per random choice (see epoch_parameters)
PARAMS = 12   # per sample: theta (6), contrast, brightness, erased box y0, y1, x0, x1


@dataclass(frozen=True)
class Recipe:
    """Probabilities and ranges, as in the albumentations recipe of the same name."""

    flip: float
    affine: float            # probability of the affine
    translate: float         # fraction of the side, +-
    scale: tuple[float, float]
    rotate: float            # degrees, +-
    color: float = 0.0       # probability of brightness/contrast
    brightness: float = 0.0  # +- fraction of 255
    contrast: float = 0.0    # +- factor around 1
    erase: float = 0.0       # probability of one erased (zeroed) rectangle
    erase_side: tuple[float, float] = (0.15, 0.3)  # its height and width, fractions of the side


RECIPES = {
    "torch-light": Recipe(flip=0.5, affine=0.5, translate=0.05, scale=(0.95, 1.05), rotate=10),
    "torch-strong": Recipe(flip=0.5, affine=0.8, translate=0.1, scale=(0.85, 1.15), rotate=15,
                           color=0.5, brightness=0.3, contrast=0.3, erase=0.5),
}


def uniforms(seeds: np.ndarray, n: int) -> np.ndarray:
    """(len(seeds), n) float64 in [0, 1): stream k of each seed is splitmix64(seed + k golden)."""
    seeds = np.asarray(seeds, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = seeds[:, None] + np.arange(1, n + 1, dtype=np.uint64)[None] * GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def epoch_parameters(recipe: Recipe, seeds: np.ndarray, input_size: int = SOURCE_SIDE,
                     crop_size: int = 0, flips: np.ndarray | None = None) -> np.ndarray:
    """(N, PARAMS) float32 per-sample parameters: the 2x3 ``affine_grid`` matrix mapping output
    (crop) coordinates to source coordinates, contrast, brightness, and the erased box in output
    pixels. ``flips`` (bool, N) replaces the random flip (``alternate_flip``)."""
    n = len(seeds)
    u = uniforms(seeds, STREAMS)
    size, crop = input_size, crop_size or input_size
    flip = (u[:, 0] < recipe.flip) if flips is None else np.asarray(flips, bool)
    on = u[:, 1] < recipe.affine
    angle = np.where(on, (2 * u[:, 2] - 1) * math.radians(recipe.rotate), 0.0)
    scale = np.where(on, recipe.scale[0] + u[:, 3] * (recipe.scale[1] - recipe.scale[0]), 1.0)
    # translation as a fraction of the side; normalised coordinates span 2 per side
    shift = np.where(on[:, None], (2 * u[:, 4:6] - 1) * recipe.translate * 2, 0.0)  # (x, y)
    # the crop window's offset in the (resized) frame and its centre in normalised coordinates
    oy = np.minimum(np.floor(u[:, 6] * (size - crop + 1)), size - crop)
    ox = np.minimum(np.floor(u[:, 7] * (size - crop + 1)), size - crop)
    centre = np.stack([(2 * ox + crop) / size - 1, (2 * oy + crop) / size - 1], axis=1)
    # source = Flip (1/scale) R(-angle) (frame - shift), with frame = (crop/size) out + centre:
    # the inverse of flip, then the affine about the centre, then the crop
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    inverse = np.stack([np.stack([cos, sin], 1), np.stack([-sin, cos], 1)], 1)  # (N, 2, 2)
    inverse[:, 0] *= np.where(flip, -1.0, 1.0)[:, None]
    linear = inverse * (crop / size)
    offset = np.einsum("nij,nj->ni", inverse, centre - shift)
    theta = np.concatenate([linear, offset[:, :, None]], axis=2).reshape(n, 6)
    colour = u[:, 8] < recipe.color
    contrast = np.where(colour, 1 + (2 * u[:, 9] - 1) * recipe.contrast, 1.0)
    brightness = np.where(colour, (2 * u[:, 10] - 1) * recipe.brightness * 255, 0.0)
    lo, hi = recipe.erase_side
    h = np.maximum(1, np.floor(size * (lo + u[:, 12] * (hi - lo))))
    w = np.maximum(1, np.floor(size * (lo + u[:, 13] * (hi - lo))))
    y0 = np.floor(u[:, 14] * (size - h + 1))
    x0 = np.floor(u[:, 15] * (size - w + 1))
    box = np.stack([y0 - oy, y0 + h - oy, x0 - ox, x0 + w - ox], axis=1)
    box[u[:, 11] >= recipe.erase] = 0  # an empty box: nothing erased
    return np.concatenate([theta, contrast[:, None], brightness[:, None], box],
                          axis=1).astype(np.float32)


def augment_batch(images: torch.Tensor, params: torch.Tensor, out_size: int,
                  channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, 48, 48) and (B, PARAMS) on one device -> float (B, 1, out, out) in [-1, 1]."""
    b = len(images)
    x = images.unsqueeze(1).float()
    theta = params[:, :6].reshape(b, 2, 3)
    grid = F.affine_grid(theta, [b, 1, out_size, out_size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = (x * params[:, 6, None, None, None] + params[:, 7, None, None, None]).clamp_(0, 255)
    pos = torch.arange(out_size, device=x.device, dtype=params.dtype)
    rows = (pos >= params[:, 8, None]) & (pos < params[:, 9, None])  # (B, out)
    cols = (pos >= params[:, 10, None]) & (pos < params[:, 11, None])
    x = x.masked_fill((rows[:, :, None] & cols[:, None, :]).unsqueeze(1), 0.0)
    x = x.div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
