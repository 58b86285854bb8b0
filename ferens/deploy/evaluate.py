"""Scoring a bundle on labelled data (FER2013 in either layout, or a face folder with the
bundle's classes), for one split.

    >>> from ferens.deploy.evaluate import evaluate_bundle
    >>> evaluate_bundle(load_bundle("model.ferens"), "fer2013.csv.gz", "test")  # doctest: +SKIP

This is how the shipped model's published PrivateTest accuracy is reproduced:
``ferens evaluate --split test``.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from ferens.data.fer2013 import load_fer2013, resolve_data_path
from ferens.errors import FerensError
from ferens.runs import Predictions, split_metrics

# Faces per progress step: a multiple of the bundle's batch of 256, so the batches (and the
# numbers) are exactly those of one call over all faces.
CHUNK = 1024


def evaluate_bundle(bundle, data: str | None = None, split: str = "test",
                    backend: str = "torch", show_progress: bool = False) -> dict:
    """Accuracy, macro-F1, balanced accuracy and per-class recall of a bundle on one split;
    ``show_progress`` prints the faces scored so far to stderr."""
    path = resolve_data_path(data)
    part = load_fer2013(path).split(split)
    if tuple(part.class_names) != tuple(bundle.class_names):
        raise FerensError(f"{path}: its classes {list(part.class_names)} are not the model's "
                          f"{list(bundle.class_names)} (in that order); evaluate a model on "
                          "data with its own label set")
    start, chunks = time.perf_counter(), []
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if show_progress else None
    if say:
        say(f"evaluate: {len(part)} {split} faces from {path}")
    for begin in range(0, len(part), CHUNK):
        chunks.append(bundle.predict_log_proba(part.images[begin:begin + CHUNK], backend))
        if say:
            done = min(begin + CHUNK, len(part))
            say(f"evaluate: {done}/{len(part)} faces ({100 * done / len(part):.0f}%), "
                f"{time.perf_counter() - start:.0f} s")
    log_probs = np.concatenate(chunks)
    metrics = split_metrics(Predictions(log_probs.astype(np.float32), part.labels, part.row_ids,
                                        tuple(bundle.class_names)))
    return {"model": bundle.manifest.get("name", str(bundle.path)), "bundle": str(bundle.path),
            "tta": bundle.tta or "members' own", "data": str(path), "split": split,
            "rows": int(len(part)), **metrics}
