"""Scoring a bundle on labelled FER2013 data (either layout), for one split.

    >>> from ferens.evaluate import evaluate_bundle
    >>> evaluate_bundle(load_bundle("model.ferens"), "fer2013.csv.gz", "test")  # doctest: +SKIP

This is how the shipped model's published PrivateTest accuracy is reproduced:
``ferens evaluate --split test``.
"""

from __future__ import annotations

import numpy as np

from ferens.data import load_fer2013, resolve_data_path
from ferens.predictions import Predictions, split_metrics


def evaluate_bundle(bundle, data: str | None = None, split: str = "test",
                    backend: str = "torch") -> dict:
    """Accuracy, macro-F1, balanced accuracy and per-class recall of a bundle on one split."""
    path = resolve_data_path(data)
    part = load_fer2013(path).split(split)
    log_probs = bundle.predict_log_proba(part.images, backend)
    metrics = split_metrics(Predictions(log_probs.astype(np.float32), part.labels, part.row_ids))
    return {"model": bundle.manifest.get("name", str(bundle.path)), "bundle": str(bundle.path),
            "tta": bundle.tta or "members' own", "data": str(path), "split": split,
            "rows": int(len(part)), **metrics}
