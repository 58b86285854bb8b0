import numpy as np

from ferens.data.sampling import epoch_order, oversample_targets

LABELS = np.repeat(np.arange(7), [400, 40, 410, 720, 480, 320, 500])


def test_plain_epoch_is_a_permutation_deterministic_in_the_seed():
    order = epoch_order(LABELS, epoch_seed=3)
    assert np.array_equal(np.sort(order), np.arange(len(LABELS)))
    assert np.array_equal(order, epoch_order(LABELS, epoch_seed=3))
    assert not np.array_equal(order, epoch_order(LABELS, epoch_seed=4))


def test_oversampling_draws_rare_classes_more_often_at_the_same_epoch_size():
    order = epoch_order(LABELS, epoch_seed=0, oversample=True)
    assert len(order) == len(LABELS)
    share = np.bincount(LABELS[order], minlength=7) / len(order)
    assert share[1] > 0.10 > np.bincount(LABELS)[1] / len(LABELS)
    assert np.allclose(share, 1 / 7, atol=0.03)


def test_oversampling_power_interpolates_between_natural_and_balanced():
    counts = np.bincount(LABELS)
    assert oversample_targets(counts, power=0.0) == dict(enumerate(counts.tolist()))
    assert set(oversample_targets(counts, power=1.0).values()) == {720}
    half = oversample_targets(counts, power=0.5)
    assert counts[1] < half[1] < 720


def test_full_oversampling_keeps_every_original_example_when_epoch_grows():
    order = epoch_order(LABELS, epoch_seed=1, oversample=True, keep_epoch_size=False)
    assert len(order) == 7 * 720
    assert set(order.tolist()) == set(range(len(LABELS)))


def test_oversampling_is_redrawn_every_epoch():
    # which copies of the rare classes (and which common examples) an epoch holds changes
    for keep_epoch_size in (True, False):
        first, second = (np.sort(epoch_order(LABELS, epoch_seed=s, oversample=True,
                                             keep_epoch_size=keep_epoch_size)) for s in (5, 6))
        assert not np.array_equal(first, second)


def test_the_training_loader_draws_a_new_oversampled_epoch_each_epoch():
    from ferens.config import TrainConfig
    from ferens.data.loader import EpochBatches

    batches = EpochBatches(LABELS, TrainConfig(imbalance="oversample", batch_size=256))
    drawn = []
    for epoch in (1, 2, 3):
        batches.epoch = epoch
        drawn.append(np.sort(np.concatenate([idx for _, idx in batches])))
    assert not np.array_equal(drawn[0], drawn[1]) and not np.array_equal(drawn[1], drawn[2])
    share = np.bincount(LABELS[drawn[1]], minlength=7) / len(drawn[1])
    assert share[1] > 0.10  # still oversampled, not just reshuffled
