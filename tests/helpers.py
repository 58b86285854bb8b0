"""Test helpers that write synthetic runs and predictions with numpy (no torch): several test
modules use them. They lived in the test module that first needed them; here, no test module
imports another.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferens.classes import CLASS_NAMES
from ferens.io import write_json
from ferens.runs import Predictions, save_predictions

PER_CLASS = 30
VAL_LABELS = np.repeat(np.arange(7), PER_CLASS)
TEST_LABELS = np.repeat(np.arange(7), PER_CLASS)
VAL_IDS = np.arange(len(VAL_LABELS))
TEST_IDS = 10_000 + np.arange(len(TEST_LABELS))


def expert_logits(labels: np.ndarray, strong: set[int], seed: int,
                  strong_margin: float = 4.0, weak_margin: float = 0.3) -> np.ndarray:
    """Noisy logits that are confidently right on `strong` classes and near chance elsewhere."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, (len(labels), 7))
    margin = np.where(np.isin(labels, list(strong)), strong_margin, weak_margin)
    logits[np.arange(len(labels)), labels] += margin
    return logits


def write_member(root: Path, name: str, val_logits: np.ndarray, test_logits: np.ndarray,
                 val_labels: np.ndarray = VAL_LABELS, test_labels: np.ndarray = TEST_LABELS,
                 val_ids: np.ndarray = VAL_IDS, test_ids: np.ndarray = TEST_IDS) -> Path:
    """A member folder with config, summary and val/test predictions."""
    path = root / name
    write_json(path / "config.json", {"name": name, "kind": "member"})
    write_json(path / "summary.json", {"name": name, "kind": "member"})
    save_predictions(path / "predictions" / "val.npz", Predictions(val_logits, val_labels, val_ids))
    save_predictions(path / "predictions" / "test.npz",
                     Predictions(test_logits, test_labels, test_ids))
    return path


def complementary_members(root: Path, test_labels: np.ndarray = TEST_LABELS) -> list[Path]:
    """Three members, each an expert on different classes."""
    experts = {"a": {0, 1, 2}, "b": {3, 4}, "c": {5, 6}}
    return [write_member(root, name, expert_logits(VAL_LABELS, strong, seed),
                         expert_logits(TEST_LABELS, strong, seed + 100), test_labels=test_labels)
            for seed, (name, strong) in enumerate(experts.items())]


K = len(CLASS_NAMES)


def synthetic_predictions(n: int, accuracy: float, seed: int, first_row: int = 0) -> Predictions:
    """Every class present; about `accuracy` of rows get a boosted logit on the true class.

    The labels depend only on `n`, so runs of the same size share them like real runs do.
    """
    labels = np.concatenate([np.arange(K), np.random.default_rng(n).integers(0, K, n - K)])
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, K)).astype(np.float32)
    hit = rng.random(n) < accuracy
    logits[np.flatnonzero(hit), labels[hit]] += 4.0
    return Predictions(logits, labels.astype(np.int64), np.arange(first_row, first_row + n))


def make_run(root: Path, folder: str, preds: Predictions, name: str | None = None) -> Path:
    run = root / folder
    for split in ("val", "test"):
        save_predictions(run / "predictions" / f"{split}.npz", preds)
    write_json(run / "config.json", {"name": name or folder})
    write_json(run / "summary.json", {"name": name or folder})
    return run
