import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ferens.losses import (
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
