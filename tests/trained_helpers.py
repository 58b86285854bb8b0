"""Test helpers that train a tiny member or use one (a bundle fixture), and the test image and
video with their true face boxes: several test modules use them. They lived in the test module
that first needed them; here, no test module imports another.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import fer_rows, write_fer_csv

from ferens.config import TrainConfig
from ferens.deploy.export import export_bundle
from ferens.train.member import train_member

REAL_DATA = Path(__file__).resolve().parents[2] / "shared/data/fer2013/fer2013.csv.gz"
# Hand-labelled face in skimage.data.astronaut() (x, y, w, h): hairline to chin, cheek to cheek.
ASTRONAUT_FACE = (172, 62, 100, 106)


def tiny_member(root: Path, csv: Path, name: str, **overrides) -> Path:
    """A resnet18 at width 0.25 trained for one epoch on the tiny synthetic CSV."""
    cfg = TrainConfig(name=name, out_dir=str(root / "runs"), data=str(csv), epochs=1, width=0.25,
                      batch_size=16, threads=1, **overrides)
    train_member(cfg, show_progress=False)
    return cfg.run_dir


def tiny_member_on_its_own_csv(tmp_path_factory, prefix: str) -> Path:
    """`tiny_member` "m" on a fresh 10-row synthetic FER2013 CSV, with its own data cache."""
    root = tmp_path_factory.mktemp(prefix)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERENS_CACHE", str(root / "cache"))
        csv = write_fer_csv(root / "fer2013.csv",
                            fer_rows({"Training": 6, "PublicTest": 2, "PrivateTest": 2}))
        return tiny_member(root, csv, "m")


def astronaut_bgr() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def iou(a: tuple, b: tuple) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _predict(bundle: Path, face: Path, out: Path, *extra) -> list:
    return ["predict", face, "--model", bundle, "--no-detect", "--out", out, *extra]


FPS, FRAMES = 10, 20


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERENS_CACHE", str(root / "cache"))
        csv = write_fer_csv(root / "fer2013.csv",
                            fer_rows({"Training": 6, "PublicTest": 2, "PrivateTest": 2}))
        member = tiny_member(root, csv, "v", tta="flip")
    return export_bundle(member, root / "v.ferens", half=True)


def write_video(path, frames: int = FRAMES, face_from: int = 0,
                face_until: int | None = None) -> list[tuple]:
    """A 640x480 MJPG video: the astronaut's face pasted at a place that moves, from frame
    ``face_from`` on (until frame ``face_until``, excluded); returns the true face box per
    frame."""
    x, y, w, h = ASTRONAUT_FACE
    face = astronaut_bgr()[y - 20:y + h + 20, x - 20:x + w + 20]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (640, 480))
    boxes = []
    for i in range(frames):
        canvas = np.full((480, 640, 3), 90, np.uint8)
        left, top = 100 + (10 * i) % 300, 120
        if face_from <= i < (frames if face_until is None else face_until):
            canvas[top:top + face.shape[0], left:left + face.shape[1]] = face
        boxes.append((left + 20, top + 20, w, h))
        writer.write(canvas)
    writer.release()
    return boxes
