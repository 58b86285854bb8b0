"""Exact-duplicate images: train/test leakage and duplicate groups with conflicting labels."""

from __future__ import annotations

import hashlib

import numpy as np

from ferens.runs import Predictions, row_positions

TRAIN_USAGE = "Training"
SUBSETS = ("leaked", "leaked_same_label", "conflicting", "duplicated", "rest")


def duplicate_groups(images: np.ndarray) -> np.ndarray:
    """Group id per image; images share an id exactly when all their pixel bytes are equal."""
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    digests = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]
    _, group = np.unique(np.array(digests, dtype="S16"), return_inverse=True)
    return group.reshape(-1).astype(np.int64)


def duplicate_flags(group: np.ndarray, labels: np.ndarray,
                    usage: np.ndarray) -> dict[str, np.ndarray]:
    """Per dataset row: duplicated, leaked (a copy is in Training), conflicting labels, rest.

    `leaked_same_label` marks leaked rows whose Training copy carries the same label, the case
    where memorising the training image gives the right answer.
    """
    n_groups = int(group.max()) + 1 if len(group) else 0
    size = np.bincount(group, minlength=n_groups)
    is_train = usage == TRAIN_USAGE
    has_train = np.bincount(group, weights=is_train, minlength=n_groups) > 0
    k = int(labels.max()) + 1 if len(labels) else 1
    n_labels = np.bincount(np.unique(group * k + labels) // k, minlength=n_groups)
    train_codes = np.unique(group[is_train] * k + labels[is_train])
    leaked = has_train[group] & ~is_train
    return {
        "leaked": leaked,
        "leaked_same_label": leaked & np.isin(group * k + labels, train_codes),
        "conflicting": n_labels[group] > 1,
        "duplicated": size[group] > 1,
        "rest": size[group] == 1,
    }


def duplicate_analysis(dataset, preds: list[Predictions], names: list[str],
                       max_groups: int = 20) -> dict:
    """Duplicate counts on the evaluated rows and each run's accuracy on them vs the rest."""
    group = duplicate_groups(dataset.images)
    flags = duplicate_flags(group, dataset.labels, dataset.usage)
    accuracy, counts = {}, {}
    for name, p in zip(names, preds, strict=True):
        pos = row_positions(dataset.row_ids, p.row_ids)
        known = pos >= 0
        correct = (p.predicted == p.labels)[known]
        subset = {s: flags[s][pos[known]] for s in SUBSETS}
        accuracy[name] = {s: _acc(correct[m]) for s, m in subset.items()}
        counts[name] = {s: int(m.sum()) for s, m in subset.items()}
    first = row_positions(dataset.row_ids, preds[0].row_ids)
    first = first[first >= 0]
    conflicted = np.unique(group[first][flags["conflicting"][first]])
    return {
        "n_rows": int(len(first)),
        "counts": counts[names[0]],
        "counts_per_run": counts,
        "accuracy": accuracy,
        "n_conflicting_groups": int(len(conflicted)),
        "conflicting_groups": [_group_rows(dataset, group, g) for g in conflicted[:max_groups]],
    }


def label_mismatch(dataset, preds: Predictions) -> tuple[int, float]:
    """How many prediction rows are missing from the dataset or carry another label there."""
    pos = row_positions(dataset.row_ids, preds.row_ids)
    bad = (pos < 0) | (dataset.labels[np.maximum(pos, 0)] != preds.labels)
    return int(bad.sum()), float(bad.mean()) if len(bad) else 0.0


def _group_rows(dataset, group: np.ndarray, g: int) -> dict:
    members = np.flatnonzero(group == g)
    return {"row_ids": dataset.row_ids[members].tolist(),
            "labels": dataset.labels[members].tolist(),
            "usage": [str(u) for u in dataset.usage[members]]}


def _acc(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if len(mask) else None
