"""Recipe features: mixing, FER+ soft targets, alternating flip, shift TTA, distillation loss."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ferens.config import TrainConfig
from ferens.data.fer2013 import FERPLUS_VOTES, FerDataset
from ferens.data.loader import AugmentedBatches, EpochBatches
from ferens.errors import FerensError
from ferens.models.inference import SHIFT_PIXELS, tta_views
from ferens.train.losses import FocalCrossEntropy, distillation_loss
from ferens.train.mixing import mix_batch
from ferens.train.targets import ferplus_soft_targets


def _batch(n=6, side=8):
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, side, side).clone()
    q = torch.nn.functional.one_hot(torch.arange(n) % 7, 7).float()
    return x, q


def test_mixup_mixes_images_and_targets_with_one_lambda():
    x, q = _batch()
    cfg = TrainConfig(mixup_alpha=0.4)
    mixed, (mq,), lam = mix_batch(x, [q], 3, cfg)
    assert 0 < lam < 1
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0))
    assert torch.allclose(mq, lam * q + (1 - lam) * q.flip(0))
    again, _, lam2 = mix_batch(x, [q], 3, cfg)
    assert lam2 == lam and torch.equal(again, mixed)  # seeded: a resume mixes the same way


def test_cutmix_lambda_is_the_share_of_pixels_kept():
    x, q = _batch(side=16)
    mixed, (mq,), lam = mix_batch(x, [q], 5, TrainConfig(cutmix_alpha=1.0))
    kept = (mixed == x).float().mean().item()
    assert lam == pytest.approx(kept) and lam < 1
    assert torch.allclose(mq.sum(1), torch.ones(len(q)))
    assert torch.allclose(mq[0], lam * q[0] + (1 - lam) * q[-1])


def test_mix_prob_zero_and_no_alpha_leave_the_batch_alone():
    x, q = _batch()
    for cfg in (TrainConfig(mixup_alpha=1.0, mix_prob=0.0), TrainConfig()):
        out, (tq,), lam = mix_batch(x, [q], 1, cfg)
        assert lam == 1.0 and out is x and tq is q
    share = np.mean([mix_batch(x, [q], s, TrainConfig(mixup_alpha=1.0, mix_prob=0.3))[2] < 1
                     for s in range(400)])
    assert 0.22 < share < 0.38


def _votes_file(path, usage, counts):
    rows = []
    for u, c in zip(usage, counts, strict=True):
        rows.append({"Usage": u, **dict(zip(FERPLUS_VOTES, c, strict=True))})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _train(labels, row_ids):
    n = len(labels)
    return FerDataset(np.zeros((n, 48, 48), np.uint8), np.array(labels), np.array(["Training"] * n),
                      np.array(row_ids), "data.csv")


def test_ferplus_soft_targets_mix_vote_shares_into_the_label(tmp_path):
    #   neutral happiness surprise sadness anger disgust fear contempt unknown NF
    counts = [[6, 0, 0, 0, 4, 0, 0, 0, 0, 0],   # row 0: 60% neutral, 40% anger
              [0, 0, 0, 0, 0, 0, 0, 5, 3, 2],   # row 1: only contempt/unknown/NF votes
              [0, 8, 0, 0, 0, 0, 0, 2, 0, 0]]   # row 2: happiness, contempt dropped
    votes = _votes_file(tmp_path / "v.csv", ["Training"] * 3, counts)
    soft = ferplus_soft_targets(_train([0, 3, 3], [0, 1, 2]), votes, lam=0.5)
    expected0 = np.zeros(7)
    expected0[0] = 0.5 + 0.5 * 0.4
    expected0[6] = 0.5 * 0.6
    assert np.allclose(soft[0], expected0)
    assert np.allclose(soft[1], np.eye(7)[3])     # no usable votes: one-hot
    assert np.allclose(soft[2], np.eye(7)[3])     # FER+ agrees: still one-hot
    assert np.allclose(soft.sum(1), 1)


def test_ferplus_soft_targets_refuse_rows_that_are_not_training_rows_in_ferplus(tmp_path):
    votes = _votes_file(tmp_path / "v.csv", ["Training", "PublicTest"], [[1] + [0] * 9] * 2)
    with pytest.raises(FerensError, match="row 1 is 'PublicTest' in FER\\+"):
        ferplus_soft_targets(_train([0, 0], [0, 1]), votes, lam=0.5)


def test_alternate_flip_mirrors_each_image_every_other_epoch():
    images = np.random.default_rng(0).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    cfg = TrainConfig(augment="none", alternate_flip=True)
    ds = AugmentedBatches(images, cfg)
    for epoch in (1, 2):
        batch, idx = ds[(epoch, np.arange(4))]
        for i in range(4):
            flipped = (epoch + i) % 2 == 1
            expected = images[i, :, ::-1] if flipped else images[i]
            assert np.array_equal(batch[i].numpy(), expected)


def test_per_sample_augmentation_does_not_depend_on_batch_composition():
    images = np.random.default_rng(0).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    ds = AugmentedBatches(images, TrainConfig(augment="strong", seed=3))
    whole, _ = ds[(2, np.arange(6))]
    part, _ = ds[(2, np.array([4, 1]))]
    assert torch.equal(part[0], whole[4]) and torch.equal(part[1], whole[1])
    other_epoch, _ = ds[(3, np.array([4]))]
    assert not torch.equal(other_epoch[0], whole[4])
    assert not torch.equal(whole[4], torch.from_numpy(images[4]))  # it does augment


def test_epoch_batches_cover_the_epoch_and_change_order_between_epochs():
    labels = np.repeat(np.arange(7), 5)
    batches = EpochBatches(labels, TrainConfig(batch_size=8))
    first = np.concatenate([idx for _, idx in batches])
    batches.epoch = 2
    second = np.concatenate([idx for _, idx in batches])
    assert sorted(first) == list(range(35)) and not np.array_equal(first, second)


def test_shift_tta_moves_the_view_by_a_few_pixels():
    batch = np.random.default_rng(0).integers(0, 256, (2, 48, 48), dtype=np.uint8)
    views = tta_views(batch, TrainConfig(tta="shift"), "shift")
    assert len(views) == 10 and all(v.shape == (2, 48, 48) for v in views)
    s = SHIFT_PIXELS
    assert np.array_equal(views[0], batch)
    assert np.array_equal(views[2][:, :-s], batch[:, s:])       # moved up by s pixels
    assert np.array_equal(views[5], batch[:, :, ::-1])
    crop = tta_views(batch, TrainConfig(tta="shift", crop_size=40), "shift")
    assert np.array_equal(crop[0], batch[:, 4:44, 4:44])
    assert np.array_equal(crop[4], batch[:, 4:44, 4 + s:44 + s])


def test_soft_targets_loss_equals_hard_loss_on_one_hot_targets():
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 6])
    q = torch.nn.functional.one_hot(y, 7).float()
    for gamma in (0.0, 2.0):
        loss = FocalCrossEntropy(gamma=gamma)
        assert torch.allclose(loss(logits, y), loss(logits, q), atol=1e-6)


def test_distillation_loss_is_zero_when_the_student_matches_the_teacher():
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(1))
    teacher = (logits / 2.0).softmax(1)
    assert distillation_loss(logits, teacher, 2.0).abs().item() < 1e-6
    assert distillation_loss(torch.zeros(4, 7), teacher, 2.0).item() > 0
