"""Predict expressions on photos: find faces, crop them like FER2013, run a bundle, report rows.

    >>> from ferens.bundle import load_bundle
    >>> from ferens.predict import predict_images
    >>> rows = predict_images(load_bundle("model.ferens"), ["photos/"])   # doctest: +SKIP
    >>> rows.attrs["skipped"]                                             # doctest: +SKIP

One row per face: file, face index, video frame and time (empty for photos), box (x, y, w, h
in the original image), a probability per class, the top class and its probability. Videos
(.mp4 .avi .mov .mkv .webm) are read frame by frame with OpenCV, sampled (``every`` N frames or
``fps``), and streamed through the model in batches, so memory stays flat on long videos; each
gets a summary (share of each emotion, the dominant one) in ``rows.attrs["videos"]``.
Files that cannot be used (missing, unreadable, not an
image, no face found) are listed in ``rows.attrs["skipped"]`` with a reason; they never stop the
batch. ``rows.attrs["summary"]`` counts files, faces and skips by reason.

Faces are found with OpenCV's Haar cascade (``cv2.data.haarcascades``) when the installed OpenCV
has it (4.x); OpenCV 5 dropped the cascades, so the OpenCV-trained LBP frontal-face cascade that
ships with scikit-image is used instead. Neither needs a download.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ferens.bundle import BACKENDS, FACE_SIDE, Bundle
from ferens.errors import FerensError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm",
                  ".pbm", ".pnm", ".jp2"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
DEFAULT_VIDEO_FPS = 5.0  # frames sampled per second of video unless --every or --fps says
DETECTORS = ("auto", "haar", "lbp")
# Margin per side (fraction of the box side) so crops frame faces as FER2013 does: on 300
# FER2013 test faces upscaled 3x, both detectors' boxes span a median 0.972 of the crop's side.
# Wider crops cost accuracy: with a 0.2 margin a member's accuracy on them fell from 53% to 37%.
MARGIN = 0.015
# Smallest face searched (pixels; --min-face). 48 = FER2013's own resolution: smaller faces would
# be upsampled, and scanning down to 24 px made detection about 2x slower (results/bench.md).
# LBP hits a face needs: picked on the astronaut photo (PNG and JPEG) and 120 FER2013 faces
# pasted into canvases: LBP with 7 neighbours finds 70/120 with no hit on the astronaut's suit
# (Haar, 5 neighbours: 89/120); fewer let LBP fire on it.
DEFAULT_MIN_FACE = 48
LBP_MIN_FACE = 36
LBP_NEIGHBOURS = 7
DETECT_MAX_SIDE = 1600
HAAR_FILE = "haarcascade_frontalface_default.xml"
SKIP_REASONS = ("not found", "unreadable", "not an image", "not a video", "too large",
                "no face found", "failed")
# Images are measured from their header and skipped above this many pixels (a 30000x30000
# PNG of 856 KB would otherwise take 6 GB to decode).
MAX_PIXELS = 50_000_000

Box = tuple[int, int, int, int]


class SkipFile(Exception):
    """A file that cannot be used; carries one of SKIP_REASONS and a detail message."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class FaceDetector:
    """A frontal-face detector returning (x, y, w, h) boxes, and the crop margin that suits it."""

    name: str
    margin: float
    find: Callable[[np.ndarray], list[Box]]
    min_face: int = DEFAULT_MIN_FACE

    def detect(self, gray: np.ndarray) -> list[Box]:
        """Boxes in reading order; large images are searched at most DETECT_MAX_SIDE wide, and
        images narrower than the smallest face have none."""
        if min(gray.shape) < self.min_face:
            return []
        scale = min(1.0, DETECT_MAX_SIDE / max(gray.shape))
        small = gray if scale == 1.0 else cv2.resize(
            gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        boxes = [tuple(int(round(v / scale)) for v in box) for box in self.find(small)]
        return sorted(drop_nested(boxes), key=lambda b: (b[1], b[0]))


def drop_nested(boxes: list[Box]) -> list[Box]:
    """Keep the larger of two boxes when one's centre lies inside the other (one face, two hits)."""
    kept: list[Box] = []
    for box in sorted(boxes, key=lambda b: -b[2] * b[3]):
        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
        if not any(k[0] <= cx <= k[0] + k[2] and k[1] <= cy <= k[1] + k[3] for k in kept):
            kept.append(box)
    return kept


def haar_available() -> bool:
    """Whether the installed OpenCV ships the Haar cascade classifier and its data."""
    data = getattr(cv2, "data", None)
    return (hasattr(cv2, "CascadeClassifier") and data is not None
            and (Path(data.haarcascades) / HAAR_FILE).is_file())


def _haar(min_face: int) -> Callable[[np.ndarray], list[Box]]:
    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / HAAR_FILE))
    return lambda gray: [tuple(b) for b in cascade.detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_face, min_face))]


def _lbp(min_face: int) -> Callable[[np.ndarray], list[Box]]:
    from skimage import data, feature

    cascade = feature.Cascade(data.lbp_frontal_face_cascade_filename())

    def find(gray: np.ndarray) -> list[Box]:
        side = max(LBP_MIN_FACE, min_face)
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


def face_detector(name: str = "auto", margin: float | None = None,
                  min_face: int = DEFAULT_MIN_FACE) -> FaceDetector:
    """`haar` (OpenCV 4.x), `lbp` (scikit-image's copy of OpenCV's LBP cascade) or `auto`;
    faces smaller than ``min_face`` pixels are not searched for."""
    if name not in DETECTORS:
        raise FerensError(f"unknown detector {name!r}; choose one of {list(DETECTORS)}")
    if not isinstance(min_face, int) or not 8 <= min_face <= 4096:
        raise FerensError(f"--min-face {min_face!r}: expected whole pixels from 8 to 4096")
    if name == "auto":
        name = "haar" if haar_available() else "lbp"
    if name == "haar" and not haar_available():
        raise FerensError(f"OpenCV {cv2.__version__} has no Haar cascades (OpenCV 5 dropped "
                          "them); use --detector lbp or install opencv-python-headless<5")
    find = _haar(min_face) if name == "haar" else _lbp(min_face)
    return FaceDetector(name, MARGIN if margin is None else margin, find, min_face)


def expand_inputs(inputs: Iterable[str | Path]) -> tuple[list[Path], list[dict]]:
    """Files as given plus image files found under folders; missing paths become skips."""
    files, skipped = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file()
                            and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        elif item.is_file():
            files.append(item)
        elif item.exists():  # a FIFO, socket or device: reading it could block forever
            skipped.append(_skip(item, SkipFile("unreadable", "not a regular file")))
        else:
            skipped.append(_skip(item, SkipFile("not found", "no such file or folder")))
    return files, skipped


def image_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) from an image's header without decoding it (None when PIL cannot tell;
    OpenCV then decodes under its own limit)."""
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(raw)) as im:
                return im.size
    except Exception:  # not a format PIL reads; OpenCV decides below
        return None


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A BGR uint8 image; raises SkipFile when it cannot be read or decoded, or when its header
    declares more than ``max_pixels`` pixels."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SkipFile("unreadable", exc.strerror or str(exc)) from None
    size = image_size(raw) if raw else None
    if size and size[0] * size[1] > max_pixels:
        raise SkipFile("too large", f"{size[0]}x{size[1]} pixels, over the limit of "
                                    f"{max_pixels:,}")
    image = None
    if raw:
        try:
            image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:
            image = None
    if image is None:
        raise SkipFile("not an image", "OpenCV cannot decode it (corrupt or not an image)")
    return image


def to_face(gray: np.ndarray) -> np.ndarray:
    """Any grayscale image -> 48x48 uint8 (unchanged when it already is 48x48)."""
    if gray.shape == (FACE_SIDE, FACE_SIDE):
        return gray
    shrink = min(gray.shape) >= FACE_SIDE
    return cv2.resize(gray, (FACE_SIDE, FACE_SIDE),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def crop_face(gray: np.ndarray, box: Box, margin: float) -> np.ndarray:
    """A square crop around a box, widened by `margin` per side, edge-padded, as 48x48."""
    x, y, w, h = box
    side = int(round(max(w, h) * (1 + 2 * margin)))
    left, top = int(round(x + w / 2 - side / 2)), int(round(y + h / 2 - side / 2))
    pad = max(0, -left, -top, left + side - gray.shape[1], top + side - gray.shape[0])
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    return to_face(gray[top + pad:top + pad + side, left + pad:left + pad + side])


@dataclass
class _Pending:
    """Faces of one image (or video frame) waiting for their batch to be predicted."""

    path: Path
    boxes: list[Box]
    faces: list[np.ndarray]
    image: np.ndarray | None
    frame: int | None = None
    time_s: float | None = None


@dataclass
class _Predictor:
    """Collects faces across files and predicts them batch_size at a time."""

    bundle: Bundle
    batch_size: int
    backend: str
    annotate_dir: Path | None
    rows: list[dict] = field(default_factory=list)
    pending: list[_Pending] = field(default_factory=list)
    annotated: set[str] = field(default_factory=set)

    def add(self, item: _Pending) -> None:
        self.pending.append(item)
        if sum(len(p.faces) for p in self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        faces = np.stack([f for p in self.pending for f in p.faces])
        probs = self.bundle.predict_proba(faces, self.backend, self.batch_size)
        names = self.bundle.class_names
        start = 0
        for item in self.pending:
            part = probs[start:start + len(item.faces)]
            start += len(item.faces)
            for i, (box, p) in enumerate(zip(item.boxes, part, strict=True)):
                top = int(p.argmax())
                per_class = dict(zip(names, map(float, p), strict=True))
                self.rows.append({"file": str(item.path), "face": i, "frame": item.frame,
                                  "time_s": item.time_s, "x": box[0], "y": box[1],
                                  "w": box[2], "h": box[3], **per_class,
                                  "top_class": names[top], "top_prob": float(p[top])})
            if self.annotate_dir is not None:
                self._annotate(item, part)
        self.pending = []

    def _annotate(self, item: _Pending, probs: np.ndarray) -> None:
        name = f"{item.path.stem}.png"
        n = 2
        while name in self.annotated:
            name, n = f"{item.path.stem}-{n}.png", n + 1
        self.annotated.add(name)
        self.annotate_dir.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(self.annotate_dir / name),
                    annotate(item.image, item.boxes, probs, self.bundle.class_names))


def annotate(image: np.ndarray, boxes: list[Box], probs: np.ndarray,
             class_names: tuple[str, ...]) -> np.ndarray:
    """A copy of a BGR image with each face's box and ``Top 0.87`` label drawn on it."""
    out = image.copy()
    thick = max(1, round(max(out.shape[:2]) / 400))
    scale = max(0.4, max(out.shape[:2]) / 1000)
    for (x, y, w, h), p in zip(boxes, probs, strict=True):
        label = f"{class_names[int(p.argmax())]} {p.max():.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (0, 255, 0), thick)
        ty = y - 4 if y - th - base - 4 >= 0 else y + h + th + 4
        cv2.rectangle(out, (x, ty - th - 2), (x + tw + 2, ty + base), (0, 255, 0), cv2.FILLED)
        cv2.putText(out, label, (x + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick,
                    cv2.LINE_AA)
    return out


def _skip(path: Path, exc: SkipFile) -> dict:
    return {"file": str(path), "reason": exc.reason, "detail": exc.detail}


def _faces_of(gray: np.ndarray, detector: FaceDetector | None) -> tuple[list[Box], list]:
    """Boxes and 48x48 crops: detected faces, or the whole image without a detector."""
    if detector is None:
        return [(0, 0, gray.shape[1], gray.shape[0])], [to_face(gray)]
    boxes = detector.detect(gray)
    if not boxes:
        raise SkipFile("no face found", f"{detector.name} detector found no frontal face")
    return boxes, [crop_face(gray, b, detector.margin) for b in boxes]


def check_sampling(every: int | None, fps: float | None) -> None:
    """--every N (frames) or --fps F (a positive, finite rate), checked before any file."""
    if every is not None and every < 1:
        raise FerensError(f"--every {every}: expected a whole number of frames >= 1")
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise FerensError(f"--fps {fps}: expected a positive number of frames per second")


def sample_video(path: Path, every: int | None = None, fps: float | None = None
                 ) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame index, time in s, BGR frame) of the sampled frames, decoded one at a time:
    every ``every``-th frame, else about ``fps`` frames per second (default 5). Frames in
    between are grabbed, not decoded. Raises SkipFile when no frame can be decoded."""
    check_sampling(every, fps)
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise SkipFile("not a video", "OpenCV cannot open it (corrupt, empty or not a video)")
    video_fps = capture.get(cv2.CAP_PROP_FPS)
    video_fps = video_fps if np.isfinite(video_fps) and video_fps > 0 else 25.0
    step = every or max(1, round(video_fps / (fps or DEFAULT_VIDEO_FPS)))
    index, decoded = 0, 0
    try:
        while True:
            if index % step:
                if not capture.grab():
                    break
            else:
                ok, image = capture.read()
                if not ok or image is None:
                    break
                decoded += 1
                yield index, round(index / video_fps, 3), image
            index += 1
    finally:
        capture.release()
    if not decoded:
        raise SkipFile("not a video", "no frame could be decoded (corrupt or truncated)")


def _predict_video(path: Path, predictor: _Predictor, finder: FaceDetector | None,
                   every: int | None, fps: float | None, detect_every: int) -> dict:
    """Stream a video's sampled frames into the predictor; returns what was sampled."""
    sampled, boxes = 0, []
    for index, time_s, image in sample_video(path, every, fps):
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if finder is None:
            boxes, faces = _faces_of(gray, None)
        else:
            if sampled % detect_every == 0:  # in between, the last boxes are reused
                boxes = finder.detect(gray)
            faces = [crop_face(gray, b, finder.margin) for b in boxes]
        sampled += 1
        if faces:
            predictor.add(_Pending(path, list(boxes), faces, None, index, time_s))
    return {"frames_sampled": sampled}


def video_summary(rows: pd.DataFrame, class_names: tuple[str, ...], sampled: dict) -> dict:
    """Share of each emotion among the sampled faces (by top class), the dominant one, the mean
    probability of each class, and how many frames had a face."""
    shares = rows["top_class"].value_counts(normalize=True)
    share = {c: float(shares.get(c, 0.0)) for c in class_names}
    return {"frames_sampled": sampled["frames_sampled"],
            "frames_with_faces": int(rows["frame"].nunique()), "faces": len(rows),
            "duration_s": float(rows["time_s"].max()) if len(rows) else 0.0,
            "share": share, "dominant": max(share, key=share.get),
            "mean_probability": {c: float(rows[c].mean()) for c in class_names}}


def row_columns(class_names: tuple[str, ...]) -> list[str]:
    """The columns of a prediction row (``predictions.csv``)."""
    return ["file", "face", "frame", "time_s", "x", "y", "w", "h", *class_names, "top_class",
            "top_prob"]


def predict_image(bundle: Bundle, image: np.ndarray, detector: str = "auto",
                  min_face: int = DEFAULT_MIN_FACE, backend: str = "torch") -> pd.DataFrame:
    """One row per face found in a BGR (H,W,3) or gray (H,W) uint8 image in memory: the box,
    each class's probability, the top class. No face: an empty frame."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise FerensError(f"image must be uint8 (H,W) or (H,W,3), got {image.dtype} "
                          f"{image.shape}")
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    predictor = _Predictor(bundle, 256, backend, None)
    try:
        boxes, faces = _faces_of(gray, face_detector(detector, min_face=min_face))
        predictor.add(_Pending(Path(), boxes, faces, None))
        predictor.flush()
    except SkipFile:  # no face: no rows
        pass
    frame = pd.DataFrame(predictor.rows, columns=row_columns(bundle.class_names))
    return frame.drop(columns=["file", "frame", "time_s"])


def predict_images(bundle: Bundle, inputs: Iterable[str | Path], detect: bool = True,
                   annotate_dir: str | Path | None = None, batch_size: int = 256,
                   backend: str = "torch", detector: str = "auto",
                   min_face: int = DEFAULT_MIN_FACE, every: int | None = None,
                   fps: float | None = None, detect_every: int = 1,
                   max_pixels: int = MAX_PIXELS) -> pd.DataFrame:
    """One row per face in the images and videos (files or folders); skips are in
    ``.attrs["skipped"]``, per-video summaries in ``.attrs["videos"]``."""
    start = time.perf_counter()
    if batch_size < 1:
        raise FerensError(f"--batch-size {batch_size}: expected at least 1")
    if detect_every < 1:
        raise FerensError(f"--detect-every {detect_every}: expected at least 1")
    check_sampling(every, fps)  # options are checked before any file, video or not
    if backend not in BACKENDS:
        raise FerensError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    files, skipped = expand_inputs([inputs] if isinstance(inputs, str | Path) else inputs)
    finder = face_detector(detector, min_face=min_face) if detect else None
    annotate_dir = Path(annotate_dir) if annotate_dir is not None else None
    predictor = _Predictor(bundle, batch_size, backend, annotate_dir)
    videos = {}
    for path in files:
        try:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                videos[str(path)] = _predict_video(path, predictor, finder, every, fps,
                                                   detect_every)
                continue
            image = read_image(path, max_pixels)
            boxes, faces = _faces_of(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), finder)
        except SkipFile as exc:
            skipped.append(_skip(path, exc))
            continue
        except (cv2.error, ValueError, MemoryError) as exc:  # one bad file never stops a batch
            skipped.append(_skip(path, SkipFile("failed", f"{type(exc).__name__}: "
                                                          f"{str(exc).strip()[:200]}")))
            continue
        predictor.add(_Pending(path, boxes, faces, image if annotate_dir is not None else None))
    predictor.flush()
    frame = pd.DataFrame(predictor.rows, columns=row_columns(bundle.class_names))
    frame["frame"] = frame["frame"].astype("Int64")
    summaries = {}
    for name, sampled in videos.items():
        rows = frame[frame["file"] == name]
        if rows.empty:
            skipped.append(_skip(Path(name), SkipFile(
                "no face found", f"no face in {sampled['frames_sampled']} sampled frame(s)")))
        else:
            summaries[name] = video_summary(rows, bundle.class_names, sampled)
    frame.attrs["skipped"] = skipped
    frame.attrs["videos"] = summaries
    frame.attrs["summary"] = {
        "inputs": len(files) + sum(s["reason"] == "not found" for s in skipped),
        "images_with_faces": int(frame.loc[frame["frame"].isna(), "file"].nunique()),
        "videos_with_faces": len(summaries), "faces": len(frame),
        "skipped": len(skipped), "skipped_by_reason": _count_reasons(skipped),
        "detector": finder.name if finder else "none", "backend": backend,
        "tta": bundle.tta or "members' own",
        "seconds": round(time.perf_counter() - start, 3)}
    return frame


def _count_reasons(skipped: list[dict]) -> dict[str, int]:
    """Skips per reason, in SKIP_REASONS order."""
    counts = Counter(s["reason"] for s in skipped)
    return {r: counts[r] for r in SKIP_REASONS if counts[r]}


def format_summary(frame: pd.DataFrame) -> str:
    """The skip summary printed by `ferens predict`: counts, then one line per skipped file."""
    s = frame.attrs["summary"]
    reasons = ", ".join(f"{n} {r}" for r, n in s["skipped_by_reason"].items())
    videos = f" and {s['videos_with_faces']} video(s)" if s.get("videos_with_faces") else ""
    lines = [f"{s['faces']} face(s) in {s['images_with_faces']} image(s){videos} from "
             f"{s['inputs']} input file(s); skipped {s['skipped']}"
             + (f" ({reasons})" if reasons else "")]
    lines += [f"  {Path(name).name}: mostly {v['dominant']} ({100 * v['share'][v['dominant']]:.0f}%"
              f" of {v['faces']} faces in {v['frames_with_faces']} frames)"
              for name, v in frame.attrs.get("videos", {}).items()]
    lines += [f"  skipped {k['file']}: {k['reason']} ({k['detail']})"
              for k in frame.attrs["skipped"]]
    return "\n".join(lines)


def write_predictions(frame: pd.DataFrame, out: str | Path, bundle: Bundle | None = None
                      ) -> tuple[Path, Path]:
    """predictions.csv (rows) and predictions.json (rows, skipped, summary) in folder `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "predictions.csv", out / "predictions.json"
    frame.to_csv(csv_path, index=False)
    payload = {"bundle": str(bundle.path) if bundle else None,
               "summary": frame.attrs.get("summary", {}),
               "videos": frame.attrs.get("videos", {}),
               "skipped": frame.attrs.get("skipped", []),
               "rows": json.loads(frame.to_json(orient="records"))}
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    names = set()
    for video in frame.attrs.get("videos", {}):
        stem, n = Path(video).stem, 2
        name = stem
        while name in names:
            name, n = f"{stem}-{n}", n + 1
        names.add(name)
        plot_timeline(frame[frame["file"] == video], out / "timelines" / f"{name}.png", video)
    return csv_path, json_path


def plot_timeline(rows: pd.DataFrame, path: Path, title: str) -> Path:
    """Probability of each class over time (mean over the faces of each sampled frame)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ferens.classes import CLASS_NAMES

    per_frame = rows.groupby("time_s")[list(CLASS_NAMES)].mean()
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for name in CLASS_NAMES:
        ax.plot(per_frame.index, per_frame[name], label=name, linewidth=1.4)
    ax.set(xlabel="time (s)", ylabel="probability", ylim=(0, 1), title=Path(title).name)
    ax.legend(ncol=7, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_face_crops(faces: np.ndarray, folder: str | Path, prefix: str = "face") -> list[Path]:
    """Write uint8 (N,48,48) faces as lossless PNGs (e.g. the FER2013 test crops)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{prefix}-{i:05d}.png" for i in range(len(faces))]
    for path, face in zip(paths, faces, strict=True):
        cv2.imwrite(str(path), face)
    return paths


def measure_throughput(bundle: Bundle, faces: np.ndarray, batch_size: int = 256,
                       backend: str = "torch", per_image: bool = False) -> dict:
    """Images/s of the bundle on in-memory 48x48 faces (batched, or one image per call)."""
    bundle.predict_proba(faces[:2], backend, batch_size)
    start = time.perf_counter()
    if per_image:
        for face in faces:
            bundle.predict_proba(face[None], backend, 1)
    else:
        bundle.predict_proba(faces, backend, batch_size)
    seconds = time.perf_counter() - start
    return {"images": len(faces), "seconds": seconds, "images_per_second": len(faces) / seconds,
            "backend": backend, "batch_size": 1 if per_image else batch_size}
