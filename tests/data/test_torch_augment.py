"""The torch recipes: the geometry is the albumentations recipe's, every choice comes from the
sample's own seed, and the batch loader on the device yields what the training step expects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ferens.config import TrainConfig
from ferens.data.loader import DeviceLoader, sample_seed, sample_seeds
from ferens.data.torch_augment import RECIPES, Recipe, augment_batch, epoch_parameters, uniforms

FACES = np.random.default_rng(1).integers(0, 256, (64, 48, 48), dtype=np.uint8)
IDENTITY = Recipe(flip=0, affine=0, translate=0, scale=(1, 1), rotate=0)


def _pixels(images: np.ndarray, params: np.ndarray, out: int) -> np.ndarray:
    x = augment_batch(torch.from_numpy(images), torch.from_numpy(params), out)
    return ((x[:, 0] + 1) * 127.5).numpy()


def test_uniforms_are_per_seed_and_in_the_unit_interval():
    seeds = np.array([0, 1, 2**63 - 1, 12345], dtype=np.uint64)
    u = uniforms(seeds, 16)
    assert u.shape == (4, 16) and (u >= 0).all() and (u < 1).all()
    assert np.array_equal(uniforms(seeds[2:3], 16), u[2:3])  # a seed's draws ignore the others
    assert len(np.unique(u.round(12))) == u.size


def test_sample_seeds_are_the_per_sample_seeds_of_the_albumentations_loader():
    idx = np.array([0, 7, 28708])
    assert [int(s) for s in sample_seeds(3, 5, idx)] == [sample_seed(3, 5, i) for i in idx]


def test_no_transform_crop_and_flip_are_exact():
    params = epoch_parameters(IDENTITY, np.arange(64))
    assert np.abs(_pixels(FACES, params, 48) - FACES).max() < 1e-3
    flipped = epoch_parameters(Recipe(flip=1, affine=0, translate=0, scale=(1, 1), rotate=0),
                               np.arange(64))
    assert np.abs(_pixels(FACES, flipped, 48) - FACES[:, :, ::-1]).max() < 1e-3
    cropped = epoch_parameters(IDENTITY, np.arange(64), crop_size=40)
    u = uniforms(np.arange(64), 16)
    oy, ox = np.floor(u[:, 6] * 9).astype(int), np.floor(u[:, 7] * 9).astype(int)
    expected = np.stack([f[y:y + 40, x:x + 40] for f, y, x in zip(FACES, oy, ox, strict=True)])
    assert np.abs(_pixels(FACES, cropped, 40) - expected).max() < 1e-3
    assert len({(y, x) for y, x in zip(oy, ox, strict=True)}) > 20  # the crop moves


def test_strong_changes_most_faces_within_its_ranges():
    recipe = RECIPES["torch-strong"]
    params = epoch_parameters(recipe, np.arange(2000), crop_size=44)
    theta = params[:, :6].reshape(-1, 2, 3)
    det = np.abs(np.linalg.det(theta[:, :, :2])) * (48 / 44) ** 2  # 1 / scale^2
    assert (det <= 1 / 0.85**2 + 1e-4).all() and (det >= 1 / 1.15**2 - 1e-4).all()
    flipped = theta[:, 0, 0] * theta[:, 1, 1] - theta[:, 0, 1] * theta[:, 1, 0] < 0
    assert 0.45 < flipped.mean() < 0.55
    assert 0.45 < (params[:, 6] != 1).mean() < 0.55  # contrast changed on half
    assert (np.abs(params[:, 6] - 1) <= 0.3 + 1e-6).all()
    erased = params[:, 9] > params[:, 8]
    assert 0.45 < erased.mean() < 0.55
    side = params[erased, 9] - params[erased, 8]
    assert side.min() >= np.floor(48 * 0.15) and side.max() <= np.floor(48 * 0.3)
    out = _pixels(FACES, params[:64], 44)
    changed = [not np.allclose(o, f[2:46, 2:46], atol=1) for o, f in zip(out, FACES, strict=True)]
    assert np.mean(changed) > 0.8
    assert out.min() >= 0 and out.max() <= 255


def test_the_erased_box_is_zero_in_the_output():
    recipe = Recipe(flip=0, affine=0, translate=0, scale=(1, 1), rotate=0, erase=1.0)
    params = epoch_parameters(recipe, np.arange(8))
    out = _pixels(FACES[:8] | 1, params, 48)  # no zero pixels of their own
    for img, p in zip(out, params, strict=True):
        y0, y1, x0, x1 = p[8:12].astype(int)
        assert (img[y0:y1, x0:x1] == 0).all()
        assert (img == 0).sum() == (y1 - y0) * (x1 - x0)


def _loader(**overrides) -> DeviceLoader:
    cfg = TrainConfig(**(dict(augment="torch-strong", crop_size=44, batch_size=16) | overrides))
    labels = np.arange(len(FACES)) % 7
    return DeviceLoader(FACES, labels, cfg, torch.device("cpu"))


def test_the_device_loader_augments_each_sample_from_its_own_seed():
    one = _loader()
    batches = list(one.epoch(3))
    assert all(x.dtype == torch.float32 and x.shape[1:] == (1, 44, 44) for x, _ in batches)
    assert all(idx.device.type == "cpu" for _, idx in batches)
    x = torch.cat([b[0] for b in batches])
    idx = torch.cat([b[1] for b in batches]).numpy()
    assert sorted(idx) == list(range(64))
    # the same sample in another batch size is augmented identically
    other = torch.cat([b[0] for b in _loader(batch_size=5).epoch(3)])
    order = torch.cat([b[1] for b in _loader(batch_size=5).epoch(3)]).numpy()
    assert np.array_equal(order[:len(idx)], idx[:len(order)])
    n = min(len(x), len(other))
    assert torch.allclose(x[:n], other[:n], atol=1e-5)
    # alone, a sample gets the parameters of its seed
    alone = epoch_parameters(RECIPES["torch-strong"], sample_seeds(0, 3, idx[:1]), 48, 44)
    single = augment_batch(torch.from_numpy(FACES[idx[:1]]), torch.from_numpy(alone), 44)
    assert torch.allclose(single, x[:1], atol=1e-5)
    again = torch.cat([b[0] for b in _loader().epoch(4)])
    assert not torch.allclose(x, again)  # another epoch, other choices


def test_alternate_flip_mirrors_by_epoch_and_index():
    cfg = dict(alternate_flip=True)
    one = _loader(**cfg)
    idx = torch.cat([b[1] for b in one.epoch(1)]).numpy()
    params = epoch_parameters(RECIPES["torch-strong"], sample_seeds(0, 1, idx), 48, 44,
                              flips=(1 + idx) % 2 == 1)
    theta = params[:, :6].reshape(-1, 2, 3)
    flipped = theta[:, 0, 0] * theta[:, 1, 1] - theta[:, 0, 1] * theta[:, 1, 0] < 0
    assert np.array_equal(flipped, (1 + idx) % 2 == 1)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_recipe_keeps_pixels_in_range(name):
    params = epoch_parameters(RECIPES[name], np.arange(64))
    out = _pixels(FACES, params, 48)
    assert out.shape == (64, 48, 48) and out.min() >= 0 and out.max() <= 255
