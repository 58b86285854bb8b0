"""The cascade face detectors: OpenCV's Haar frontal-face cascade (``cv2.data.haarcascades``,
OpenCV 4.x) and the OpenCV-trained LBP frontal-face cascade shipped with scikit-image (the fallback
on an OpenCV 5 without cascades). ``ferens.deploy.faces`` chooses between detectors.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from ferens.deploy.face_crops import Box

HAAR_FILE = "haarcascade_frontalface_default.xml"
HAAR_NEIGHBOURS = 5
# LBP hits a face needs: picked on the astronaut photo (PNG and JPEG) and 120 FER2013 faces
# pasted into canvases: 7 neighbours find 70/120 with no hit on the astronaut's suit.
LBP_NEIGHBOURS = 7
LBP_MIN_WINDOW = 36


def _gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def haar_available() -> bool:
    """Whether the installed OpenCV ships the Haar cascade classifier and its data."""
    data = getattr(cv2, "data", None)
    return (hasattr(cv2, "CascadeClassifier") and data is not None
            and (Path(data.haarcascades) / HAAR_FILE).is_file())


def haar_finder(min_face: int) -> Callable[[np.ndarray], list[Box]]:
    """Raw Haar boxes of an image (faces of at least ``min_face`` pixels)."""
    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / HAAR_FILE))
    return lambda image: [tuple(b) for b in cascade.detectMultiScale(
        _gray(image), scaleFactor=1.1, minNeighbors=HAAR_NEIGHBOURS,
        minSize=(min_face, min_face))]


def lbp_finder(min_face: int) -> Callable[[np.ndarray], list[Box]]:
    """LBP boxes of an image: scikit-image's raw hits grouped as OpenCV groups them."""
    from skimage import data, feature

    cascade = feature.Cascade(data.lbp_frontal_face_cascade_filename())

    def find(image: np.ndarray) -> list[Box]:
        gray = _gray(image)
        side = max(LBP_MIN_WINDOW, min_face)
        if min(gray.shape) < side:
            return []
        raw = cascade.detect_multi_scale(img=gray.astype(np.float32) / 255, scale_factor=1.1,
                                         step_ratio=1, min_size=(side, side),
                                         max_size=gray.shape, min_neighbor_number=0,
                                         intersection_score_threshold=1.0)
        hits = [[int(d["c"]), int(d["r"]), int(d["width"]), int(d["height"])] for d in raw]
        return group_boxes(hits, LBP_NEIGHBOURS)
    return find


def group_boxes(hits: list[list[int]], min_neighbours: int, eps: float = 0.2) -> list[Box]:
    """Raw hits (x, y, w, h) grouped as detectMultiScale groups them, by OpenCV's own
    cv2.groupRectangles: clusters of similar hits with more than ``min_neighbours`` members,
    each as its mean box (a cluster inside a larger, stronger one is dropped too)."""
    rects, _ = cv2.groupRectangles(hits, min_neighbours, eps)
    return [tuple(int(v) for v in r) for r in rects]
