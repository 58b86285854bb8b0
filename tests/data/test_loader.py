from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from conftest import synthetic_faces

from ferens.config import TrainConfig
from ferens.data.augment import apply, train_pipeline
from ferens.data.loader import DeviceLoader, TrainLoader, V1Loader, epoch_seed, make_loader
from ferens.data.sampling import epoch_order

CPU = torch.device("cpu")
LABELS = np.repeat(np.arange(7), 6)
IMAGES = synthetic_faces(LABELS)


def _batches(loader, epoch):
    return [(x.numpy().copy(), i.numpy().copy()) for x, i in loader.epoch(epoch)]


def test_the_engine_is_chosen_once_by_make_loader():
    assert type(make_loader(IMAGES, LABELS, TrainConfig(engine=1), CPU)) is V1Loader
    assert type(make_loader(IMAGES, LABELS, TrainConfig(), CPU)) is TrainLoader
    assert type(make_loader(IMAGES, LABELS, TrainConfig(augment="torch-light"), CPU)) \
        is DeviceLoader


def test_the_v1_stream_is_one_pipeline_per_epoch_consumed_in_batch_order():
    """What trained results/study: the (seed, epoch) order cut into batches, every image drawn
    in turn from one albumentations pipeline seeded by the epoch; so engine 1 reproduces v1."""
    cfg = TrainConfig(engine=1, augment="strong", batch_size=8, seed=3, imbalance="oversample")
    loader = make_loader(IMAGES, LABELS, cfg, CPU)
    for epoch in (1, 2):
        order = epoch_order(LABELS, epoch_seed(cfg.seed, epoch), oversample=True,
                            power=cfg.oversample_power)
        pipeline = train_pipeline(cfg.augment, cfg.input_size, cfg.crop_size, None,
                                  seed=epoch_seed(cfg.seed, epoch))
        expected = [order[b:b + 8] for b in range(0, len(order), 8) if len(order[b:b + 8]) >= 2]
        got = _batches(loader, epoch)
        assert [i.tolist() for _, i in got] == [e.tolist() for e in expected]
        for (x, _), idx in zip(got, expected, strict=True):
            assert np.array_equal(x, apply(pipeline, IMAGES[idx]))
    engine2 = _batches(make_loader(IMAGES, LABELS, replace(cfg, engine=2), CPU), 1)
    assert not all(np.array_equal(a, b) for (a, _), (b, _) in zip(engine2, _batches(loader, 1),
                                                                   strict=True))
