import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ferens.train.losses import (
    FocalCrossEntropy,
    build_loss,
    effective_number_weights,
    inverse_frequency_weights,
)

COUNTS = np.array([3995, 436, 4097, 7215, 4830, 3171, 4965])


def _batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(32, 7, generator=gen) * 3, torch.randint(0, 7, (32,), generator=gen)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_focal_loss_reduces_to_cross_entropy_at_gamma_zero(smoothing, weighted):
    logits, target = _batch()
    weight = torch.tensor(inverse_frequency_weights(COUNTS), dtype=torch.float32) if weighted \
        else None
    expected = F.cross_entropy(logits, target, weight=weight, label_smoothing=smoothing)
    # gamma -> 0 through the focal code path itself, not the shortcut
    near_zero = FocalCrossEntropy(weight, gamma=1e-9, label_smoothing=smoothing)
    assert torch.allclose(near_zero(logits, target), expected, atol=1e-5)
    assert torch.allclose(FocalCrossEntropy(weight, 0.0, smoothing)(logits, target), expected)


def test_focal_loss_down_weights_easy_examples():
    target = torch.tensor([0, 0])
    logits = torch.tensor([[6.0, 0, 0, 0, 0, 0, 0], [0.5, 0, 0, 0, 0, 0, 0]])
    ce = F.cross_entropy(logits, target, reduction="none")
    focal = torch.stack([FocalCrossEntropy(gamma=2.0)(logits[i:i + 1], target[i:i + 1])
                         for i in range(2)])
    assert (focal < ce).all()
    assert focal[0] / ce[0] < focal[1] / ce[1]


def test_inverse_frequency_weights_give_every_class_equal_total_weight():
    weights = inverse_frequency_weights(COUNTS)
    assert np.allclose(weights * COUNTS, (weights * COUNTS)[0])
    assert weights.argmax() == 1 and weights.argmin() == 3


@pytest.mark.parametrize("counts", [COUNTS, np.array([1, 2, 3]), np.array([5, 5]),
                                    np.array([28709, 1, 7, 999, 3, 12345, 4])])
def test_inverse_frequency_weights_are_the_weights_ferens_always_trained_with(counts):
    """scikit-learn's "balanced" weights, bit for bit the N / (K * n_c) that saved configs with
    imbalance = weighted trained with, so those members train the same."""
    counts64 = counts.astype(np.float64)
    assert np.array_equal(inverse_frequency_weights(counts),
                          counts64.sum() / (len(counts64) * counts64))


def test_effective_number_weights_lie_between_uniform_and_inverse_frequency():
    eff = effective_number_weights(COUNTS, beta=0.999)
    inv = inverse_frequency_weights(COUNTS)
    assert np.isclose(eff.sum(), 7)
    ratio = lambda w: w.max() / w.min()  # noqa: E731
    assert 1 < ratio(eff) < ratio(inv)
    assert np.allclose(effective_number_weights(COUNTS, beta=0.0), 1.0)


def test_build_loss_wires_each_strategy():
    assert build_loss("none", COUNTS).weight is None
    assert build_loss("oversample", COUNTS).weight is None
    assert build_loss("weighted", COUNTS).weight[1] > build_loss("weighted", COUNTS).weight[3]
    focal = build_loss("focal", COUNTS, focal_gamma=1.5, focal_alpha="effective")
    assert focal.gamma == 1.5 and focal.weight is not None


def test_effective_number_weights_grow_as_classes_get_rarer():
    eff = effective_number_weights(COUNTS, beta=0.999)
    assert eff.argmax() == 1 and eff.argmin() == 3  # Disgust (436) most, Happy (7215) least
    assert (np.diff(eff[np.argsort(COUNTS)]) < 0).all()  # strictly falling with the count
    expected = (1 - 0.999) / (1 - 0.999 ** COUNTS)  # Cui et al.: 1 / effective number
    assert np.allclose(eff, expected * 7 / expected.sum())
    # beta -> 1 tends to inverse frequency (same shape, both normalised to sum to K)
    inv = inverse_frequency_weights(COUNTS)
    assert np.allclose(effective_number_weights(COUNTS, beta=1 - 1e-9), inv * 7 / inv.sum(),
                       rtol=1e-3)


def _soft(target, num_classes=7):
    return F.one_hot(target, num_classes).float()


@pytest.mark.parametrize("weighted", [False, True])
def test_focal_loss_keeps_soft_targets_soft(weighted):
    """A mixed target (mixup/CutMix, FER+ votes) is a distribution, not its argmax: without
    weights the loss is linear in the target rows."""
    logits, a = _batch(1)
    b = (a + 3) % 7
    lam = 0.7
    mixed = lam * _soft(a) + (1 - lam) * _soft(b)
    weight = torch.tensor(inverse_frequency_weights(COUNTS), dtype=torch.float32) if weighted \
        else None
    loss = FocalCrossEntropy(weight, gamma=2.0)
    got = loss(logits, mixed)
    assert not torch.allclose(got, loss(logits, a), atol=1e-3)  # not collapsed to the argmax
    log_p = F.log_softmax(logits, 1)
    w = weight if weighted else torch.ones(7)
    expected = (-(mixed * w * (1 - log_p.exp()) ** 2 * log_p).sum() / (mixed * w).sum())
    assert torch.allclose(got, expected, atol=1e-5)
    if not weighted:
        assert torch.allclose(got, lam * loss(logits, a) + (1 - lam) * loss(logits, b),
                              atol=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_focal_loss_normalises_hard_and_soft_targets_alike(gamma, smoothing):
    """One normalisation, the summed target weights: a one-hot soft target gives the hard
    label's loss with class weights too, at gamma 0 as above it."""
    logits, target = _batch(2)
    weight = torch.tensor(inverse_frequency_weights(COUNTS), dtype=torch.float32)
    loss = FocalCrossEntropy(weight, gamma=gamma, label_smoothing=smoothing)
    assert torch.allclose(loss(logits, _soft(target)), loss(logits, target), atol=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_focal_loss_at_gamma_zero_without_weights_is_cross_entropy_hard_or_soft(smoothing):
    logits, a = _batch(3)
    soft = 0.6 * _soft(a) + 0.4 * _soft((a + 1) % 7)
    for target in (a, soft):
        expected = F.cross_entropy(logits, target, label_smoothing=smoothing)
        for gamma in (0.0, 1e-9):  # the shortcut and the focal code path itself
            got = FocalCrossEntropy(None, gamma=gamma, label_smoothing=smoothing)(logits, target)
            assert torch.allclose(got, expected, atol=1e-5)
