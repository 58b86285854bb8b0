"""The default model that ships inside the package, and the object to use any bundle from Python.

    >>> import ferens
    >>> model = ferens.load_model()            # the shipped bundle, checksums verified
    >>> probs = model.predict_proba(faces)     # aligned uint8 faces (N,48,48) -> (N,K)
    >>> rows = model.predict_image(photo)      # any BGR or gray image: faces are found first
    >>> model.provenance["test_accuracy"]      # what it scored, and the command that made it

The shipped bundle lives in ``ferens/deploy/weights/default.ferens`` (fp16 safetensors + JSON, a few
MB); ``experiments/make_default_model.py`` writes it, and replacing it replaces that folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ferens.errors import FerensError

SHIPPED_BUNDLE = Path(__file__).resolve().parent / "weights" / "default.ferens"


def default_model_path() -> Path:
    """The shipped bundle's folder; one clear error when this installation lacks it."""
    if not (SHIPPED_BUNDLE / "manifest.json").is_file():
        raise FerensError(f"{SHIPPED_BUNDLE}: this installation has no default model; "
                          "pass --model PATH (a bundle written by `ferens export`)")
    return SHIPPED_BUNDLE


@dataclass
class ExpressionModel:
    """A loaded bundle with the calls a user needs: faces, whole images, files and folders."""

    bundle: object  # ferens.deploy.bundle.Bundle

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.bundle.class_names

    @property
    def provenance(self) -> dict:
        return self.bundle.manifest.get("provenance", {})

    def predict_proba(self, faces: np.ndarray, backend: str = "torch",
                      batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N,K) for aligned uint8 grayscale faces (N,48,48)."""
        return self.bundle.predict_proba(faces, backend, batch_size)

    def predict_image(self, image: np.ndarray, detector: str = "auto",
                      min_face: int | None = None, confidence: float | None = None
                      ) -> pd.DataFrame:
        """One row per face found in a BGR (H,W,3) or gray (H,W) uint8 image: the box, each
        class's probability, the top class. No face: an empty frame. ``detector``, ``min_face``
        and ``confidence`` as for `ferens predict` (the detector's own settings by default)."""
        from ferens.deploy.predict import predict_image

        return predict_image(self.bundle, image, detector, min_face, confidence=confidence)

    def predict_files(self, inputs, **options) -> pd.DataFrame:
        """Images, videos and folders, as `ferens predict` does (see ferens.deploy.predict)."""
        from ferens.deploy.predict import predict_images

        return predict_images(self.bundle, inputs, **options)


def load_model(path: str | Path | None = None, device=None,
               tta: str | None = None) -> ExpressionModel:
    """The shipped default model, or the bundle at ``path``; checksums are verified on load.
    ``tta`` (none | flip | shift | tencrop) replaces each member's own test-time views."""
    from ferens.deploy.bundle import load_bundle

    bundle = load_bundle(Path(path) if path else default_model_path(), device)
    return ExpressionModel(bundle.with_tta(tta))
