"""Per-epoch index orders: plain shuffling, or class oversampling with imbalanced-learn.

imbalanced-learn is imported only when a member oversamples, so training without it (the GPU
machine has none) needs no such package."""

from __future__ import annotations

import numpy as np


def oversample_targets(counts: np.ndarray, power: float = 1.0) -> dict[int, int]:
    """Target count per class: n_max * (n_c / n_max)^(1 - power); power 1 balances fully."""
    counts = np.asarray(counts)
    n_max = counts.max()
    return {c: int(max(n, round(n_max * (n / n_max) ** (1 - power))))
            for c, n in enumerate(counts) if n > 0}


def epoch_order(labels: np.ndarray, epoch_seed: int, oversample: bool = False,
                power: float = 1.0, keep_epoch_size: bool = True) -> np.ndarray:
    """Indices into ``labels`` for one epoch, deterministic in ``epoch_seed``.

    With ``oversample`` rare classes are drawn more often (RandomOverSampler on indices);
    ``keep_epoch_size`` then subsamples back to len(labels) so compute per epoch is unchanged.
    """
    rng = np.random.default_rng(epoch_seed)
    indices = np.arange(len(labels))
    if oversample:
        from imblearn.over_sampling import RandomOverSampler

        sampler = RandomOverSampler(
            sampling_strategy=oversample_targets(np.bincount(labels), power),
            random_state=int(rng.integers(2**31)))
        indices, _ = sampler.fit_resample(indices.reshape(-1, 1), labels)
        indices = indices.ravel()
    order = rng.permutation(indices)
    if oversample and keep_epoch_size:
        order = order[: len(labels)]
    return order
