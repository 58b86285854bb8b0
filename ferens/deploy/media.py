"""Reading what `ferens predict` is given: files and folders, images (measured from their header
before they are decoded) and videos (sampled frame by frame), and why a file is skipped.

    >>> from ferens.deploy.media import expand_inputs, read_image, sample_video
    >>> files, skipped = expand_inputs(["photos/", "clip.mp4"])
    >>> image = read_image(files[0])                 # BGR uint8, or raises SkipFile(reason, ...)

A file that cannot be used raises ``SkipFile`` with one of ``SKIP_REASONS``;
``ferens.deploy.predict`` lists it in ``rows.attrs["skipped"]`` (``skip_record``) and goes on.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

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
            skipped.append(skip_record(item, SkipFile("unreadable", "not a regular file")))
        else:
            skipped.append(skip_record(item, SkipFile("not found", "no such file or folder")))
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


def skip_record(path: Path, exc: SkipFile) -> dict:
    """The entry of ``rows.attrs["skipped"]`` for a file that cannot be used."""
    return {"file": str(path), "reason": exc.reason, "detail": exc.detail}


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
