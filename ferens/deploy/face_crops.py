"""Boxes and crops: how a detector's box becomes a 48x48 face framed like FER2013.

    >>> from ferens.deploy.face_crops import CROP_RULES, crop_face
    >>> face = crop_face(gray, (x, y, w, h), CROP_RULES["haar"])   # uint8 48x48

Each detector has its own ``CropRule``: detectors draw boxes of different sizes and shapes
around the same face (MTCNN's are about 1.3x taller than wide, Haar's are square), and the
classifier was trained on FER2013's framing. The rules were fitted with
``experiments/fit_crop_rules.py`` on FER2013 PublicTest faces pasted into canvases at known
places (the crop that reproduces the true 48x48 frame); ``results/bench.md`` has the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# FER2013's faces (ferens.deploy.bundle.FACE_SIDE; not imported: that pulls in torch)
FACE_SIDE = 48

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class CropRule:
    """A square crop from a detector box: side ``scale * sqrt(w * h)`` (``scale * max(w, h)``
    with ``side="max"``), centred on the box's centre shifted by ``dx * w`` and ``dy * h``."""

    scale: float
    dx: float = 0.0
    dy: float = 0.0
    side: str = "sqrt"

    def square(self, box: Box) -> tuple[int, int, int]:
        """(left, top, side) of the crop in the image's pixels."""
        x, y, w, h = box
        base = max(w, h) if self.side == "max" else math.sqrt(w * h)
        side = max(1, int(round(self.scale * base)))
        cx, cy = x + w / 2 + self.dx * w, y + h / 2 + self.dy * h
        return int(round(cx - side / 2)), int(round(cy - side / 2)), side


# Fitted by experiments/fit_crop_rules.py (medians over FER2013 PublicTest faces pasted at known
# places; results/bench.md, "Face detectors"): the crop that best reproduces the FER2013 frame.
CROP_RULES = {
    "haar": CropRule(1.038, 0.0, 0.005),
    "lbp": CropRule(1.027, -0.011, -0.006),
    "mtcnn": CropRule(1.075, 0.023, 0.005),
}


def drop_nested(boxes: list[Box]) -> list[Box]:
    """Keep the larger of two boxes when one's centre lies inside the other (one face, two hits)."""
    kept: list[Box] = []
    for box in sorted(boxes, key=lambda b: -b[2] * b[3]):
        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
        if not any(k[0] <= cx <= k[0] + k[2] and k[1] <= cy <= k[1] + k[3] for k in kept):
            kept.append(box)
    return kept


def to_face(gray: np.ndarray) -> np.ndarray:
    """Any grayscale image -> 48x48 uint8 (unchanged when it already is 48x48)."""
    if gray.shape == (FACE_SIDE, FACE_SIDE):
        return gray
    shrink = min(gray.shape) >= FACE_SIDE
    return cv2.resize(gray, (FACE_SIDE, FACE_SIDE),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def crop_face(gray: np.ndarray, box: Box, rule: CropRule) -> np.ndarray:
    """The square crop ``rule`` draws around a box, edge-padded where it leaves the image,
    as 48x48."""
    left, top, side = rule.square(box)
    pad = max(0, -left, -top, left + side - gray.shape[1], top + side - gray.shape[0])
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    return to_face(gray[top + pad:top + pad + side, left + pad:left + pad + side])
