"""Training targets beyond the hard FER2013 label: FER+ soft targets and a teacher's
probabilities (distillation). Both apply to Training rows only; val and test keep their
FER2013 labels, so a member is still scored on the original task.

    soft = ferplus_soft_targets(train, "fer2013new.csv", lam=0.5)   # (N, 7) float32
    teacher = teacher_probabilities("ensembles/best", train, temperature=2.0)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferens.classes import NUM_CLASSES
from ferens.data.fer2013 import FERPLUS_TO_FER, FerDataset, check_ferplus_rows, read_ferplus_votes
from ferens.errors import FerensError


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]


def ferplus_distribution(votes, row_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,7) FER+ vote shares over the 7 FER2013 classes (contempt, unknown and not-a-face
    dropped, the rest renormalised) and a mask of rows that have any such vote."""
    columns = sorted(FERPLUS_TO_FER, key=FERPLUS_TO_FER.get)  # FER2013 class order
    counts = votes[columns].to_numpy(dtype=np.float64)[row_ids]
    total = counts.sum(axis=1)
    usable = total > 0
    shares = np.zeros_like(counts)
    shares[usable] = counts[usable] / total[usable, None]
    return shares.astype(np.float32), usable


def ferplus_soft_targets(train: FerDataset, path: str | Path, lam: float) -> np.ndarray:
    """(1 - lam) * one-hot(FER2013 label) + lam * FER+ vote shares; rows without usable votes
    keep their one-hot target."""
    votes = read_ferplus_votes(path)
    check_ferplus_rows(votes, train, path)
    shares, usable = ferplus_distribution(votes, train.row_ids)
    target = one_hot(train.labels)
    target[usable] = (1 - lam) * target[usable] + lam * shares[usable]
    return target


def teacher_probabilities(teacher: str | Path, train: FerDataset,
                          temperature: float) -> np.ndarray:
    """softmax(teacher log-probabilities / T) for each training row, from the teacher's saved
    ``predictions/train.npz`` (a member or an ensemble; no weights needed)."""
    from scipy.special import softmax

    from ferens.runs import load_predictions, row_positions

    path = Path(teacher) / "predictions" / "train.npz"
    if not path.is_file():
        raise FerensError(f"{teacher}: the teacher has no predictions/train.npz (members "
                          "trained with engine 2 save it; ensembles of such members too)")
    preds = load_predictions(path)
    rows = row_positions(preds.row_ids, train.row_ids)
    missing = train.row_ids[rows < 0]
    if len(missing):
        raise FerensError(f"{path}: has no prediction for training row {int(missing[0])} "
                          f"({len(missing)} rows missing)")
    if not np.array_equal(preds.labels[rows], train.labels):
        raise FerensError(f"{path}: its labels differ from the training data's (another "
                          "dataset or label set?)")
    return softmax(preds.log_probs[rows] / temperature, axis=1).astype(np.float32)
