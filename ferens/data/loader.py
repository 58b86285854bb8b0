"""Training batches: per-sample-seeded augmentation behind a ``torch.utils.data`` loader.

Every random choice for a training image is drawn from a generator seeded by
``(seed, epoch, sample index)``, so a batch is the same whether it was built in the training
process (``workers=0``) or in any number of worker processes, and a resumed run sees the same
images as an uninterrupted one. Batches are uint8 ``(B, H, W)``; scaling to [-1, 1] happens on
the training device (``ferens.models.inference.to_tensor``), as timm's GPU prefetcher does.

``torch-light`` / ``torch-strong`` members use :class:`DeviceLoader` instead: the training
images live on the training device and each batch is augmented there in one call
(``ferens.data.torch_augment``), from the same per-sample seeds.

``engine=1`` configs keep the v1 stream (:class:`V1Loader`: one albumentations pipeline seeded
per epoch and consumed in index order, in the training process); it reproduces the members of
``results/study``. `make_loader` chooses between them once, so the training loop never reads
the engine.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ferens.config import TrainConfig
from ferens.data.augment import apply, train_pipeline
from ferens.data.sampling import epoch_order
from ferens.data.torch_augment import RECIPES, augment_batch, epoch_parameters


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's order, oversampling and dropout (as in v1)."""
    return seed * 100_003 + epoch


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one training image's random choices in one epoch."""
    return (epoch_seed(seed, epoch) * 10_000_019 + int(index)) % 2**63


def sample_seeds(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """``sample_seed`` of many indices at once (uint64)."""
    base = np.uint64(sample_seed(seed, epoch, 0))  # < 2**63, and indices < 2**63: no overflow
    return (base + np.asarray(indices, dtype=np.uint64)) % np.uint64(2**63)


def _reseed(pipeline, seed: int) -> None:
    """Point the pipeline and all its transforms at one fresh generator pair (cheaper than
    ``Compose.set_random_seed``, which builds a pair per transform)."""
    rng, py_rng = np.random.default_rng(seed), random.Random(seed)
    for t in (pipeline, *pipeline.transforms):
        t.random_generator, t.py_random = rng, py_rng


class AugmentedBatches(Dataset):
    """Item ``(epoch, indices)`` -> ``(uint8 images (B,H,W), indices)`` with per-sample seeds.

    With ``alternate_flip`` the random horizontal flip is replaced by a deterministic one:
    image ``i`` is mirrored in epochs where ``epoch + i`` is odd, so every pair of epochs shows
    both orientations.
    """

    def __init__(self, images: np.ndarray, cfg: TrainConfig):
        self.images, self.seed = images, cfg.seed
        self.alternate_flip = cfg.alternate_flip
        self.pipeline = train_pipeline(cfg.augment, cfg.input_size, cfg.crop_size,
                                       cfg.augment_override, flip=not cfg.alternate_flip)
        self.identity = not self.pipeline.transforms

    def __getitem__(self, item: tuple[int, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, indices = item
        out = []
        for i in indices:
            img = self.images[i]
            if self.alternate_flip and (epoch + i) % 2:
                img = img[:, ::-1]
            if not self.identity:
                _reseed(self.pipeline, sample_seed(self.seed, epoch, i))
                img = self.pipeline(image=np.ascontiguousarray(img))["image"]
            out.append(img)
        return torch.from_numpy(np.stack(out)), torch.from_numpy(np.asarray(indices))


class EpochBatches:
    """The batches of the current epoch (set ``epoch`` before iterating): the same
    deterministic ``(seed, epoch)`` order and oversampling as v1, cut into batches."""

    def __init__(self, labels: np.ndarray, cfg: TrainConfig):
        self.labels, self.cfg, self.epoch = labels, cfg, 1

    def order(self) -> np.ndarray:
        cfg = self.cfg
        return epoch_order(self.labels, epoch_seed(cfg.seed, self.epoch),
                           oversample=cfg.imbalance == "oversample", power=cfg.oversample_power)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        order = self.order()
        for begin in range(0, len(order), self.cfg.batch_size):
            idx = order[begin:begin + self.cfg.batch_size]
            if len(idx) >= 2:  # a batch of one breaks batch norm
                yield self.epoch, idx


def _quiet_worker(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


class TrainLoader:
    """Iterate ``loader.epoch(e)`` for the batches of epoch ``e``: a ``DataLoader`` over
    :class:`AugmentedBatches` with ``workers`` processes (pinned memory and persistent workers
    on CUDA). The engine-2 loader; `make_loader` picks it."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, cfg: TrainConfig,
                 device: torch.device):
        self.batches = EpochBatches(labels, cfg)
        workers = cfg.workers
        self.loader = DataLoader(
            AugmentedBatches(images, cfg), batch_size=None, sampler=self.batches,
            num_workers=workers, pin_memory=device.type == "cuda",
            persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
            worker_init_fn=_quiet_worker if workers else None,
            # workers start from a fresh forkserver process, not a fork of this one: a fork
            # of a process whose OpenCV thread pool has run (face detection, any cv2 call
            # before training) hangs in its first cv2 call
            multiprocessing_context="forkserver" if workers else None,
            generator=torch.Generator())  # leaves the global torch stream (dropout) alone

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.batches.epoch = epoch
        yield from self.loader


class V1Loader:
    """The ``engine = 1`` stream that trained ``results/study``, kept to reproduce it: one
    albumentations pipeline seeded per epoch and consumed in batch order, in the training
    process. `make_loader` picks it, so the training loop itself never reads the engine;
    yields what :class:`TrainLoader` yields."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, cfg: TrainConfig,
                 device: torch.device):
        self.images, self.cfg = images, cfg
        self.batches = EpochBatches(labels, cfg)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.batches.epoch = epoch
        cfg = self.cfg
        pipeline = train_pipeline(cfg.augment, cfg.input_size, cfg.crop_size,
                                  cfg.augment_override, seed=epoch_seed(cfg.seed, epoch))
        for _, idx in self.batches:
            yield torch.from_numpy(apply(pipeline, self.images[idx])), torch.from_numpy(idx)


class DeviceLoader:
    """Batches of a ``torch-*`` recipe member: the training images copied once to ``device``,
    each epoch's order and per-sample parameters computed on the host and copied once, and each
    batch gathered and augmented on the device. Yields what :class:`TrainLoader` yields, with
    the images already as float (B, 1, H, W) in [-1, 1] on the device and the indices on the
    host (so reading one costs no device synchronisation)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, cfg: TrainConfig,
                 device: torch.device):
        self.cfg, self.device = cfg, device
        self.batches = EpochBatches(labels, cfg)
        self.recipe = RECIPES[cfg.augment]
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.out_size = cfg.crop_size or cfg.input_size

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.cfg
        self.batches.epoch = epoch
        order = self.batches.order()
        flips = (epoch + order) % 2 == 1 if cfg.alternate_flip else None
        params = epoch_parameters(self.recipe, sample_seeds(cfg.seed, epoch, order),
                                  cfg.input_size, cfg.crop_size, flips)
        order_host = torch.from_numpy(order)
        order_dev = order_host.to(self.device, non_blocking=True)
        params_dev = torch.from_numpy(params).to(self.device, non_blocking=True)
        for begin in range(0, len(order), cfg.batch_size):
            end = min(begin + cfg.batch_size, len(order))
            if end - begin < 2:  # a batch of one breaks batch norm
                continue
            x = augment_batch(self.images[order_dev[begin:end]], params_dev[begin:end],
                              self.out_size, cfg.channels_last)
            yield x, order_host[begin:end]


Loader = TrainLoader | V1Loader | DeviceLoader  # what the training loop iterates


def make_loader(images: np.ndarray, labels: np.ndarray, cfg: TrainConfig,
                device: torch.device) -> Loader:
    """The training loader a config asks for: the engine is chosen here, once (engine 1's v1
    stream, or engine 2's per-sample-seeded loader on the host or, for a ``torch-*`` recipe,
    on the device)."""
    if cfg.engine < 2:
        return V1Loader(images, labels, cfg, device)
    if cfg.batch_augmented:
        return DeviceLoader(images, labels, cfg, device)
    return TrainLoader(images, labels, cfg, device)
