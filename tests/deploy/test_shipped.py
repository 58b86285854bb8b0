"""The model that ships inside the package: present, verified, used by default, reproducible."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pytest
from conftest import run_cli
from trained_helpers import ASTRONAUT_FACE, astronaut_bgr, iou

import ferens
from ferens.deploy.shipped import SHIPPED_BUNDLE

REAL_DATA = Path(__file__).resolve().parents[3] / "shared/data/fer2013/fer2013.csv.gz"


def test_the_shipped_bundle_is_small_fp16_and_says_where_it_came_from():
    manifest = json.loads((SHIPPED_BUNDLE / "manifest.json").read_text())
    size = sum(p.stat().st_size for p in SHIPPED_BUNDLE.rglob("*") if p.is_file())
    assert size <= 8 * 1024 * 1024
    assert manifest["weights_dtype"] == "float16"
    prov = manifest["provenance"]
    for key in ("source_commit", "config", "train_command", "evaluate_command", "val_accuracy",
                "test_accuracy"):
        assert key in prov, key
    assert 0.5 < prov["test_accuracy"] < 1
    model = ferens.load_model()  # checksums verified on load
    assert model.provenance == prov


def test_predict_without_a_model_uses_the_shipped_one_on_a_real_photo(tmp_path, monkeypatch,
                                                                      capsys):
    cv2.imwrite(str(tmp_path / "astronaut.jpg"), astronaut_bgr())
    code, out, err = run_cli(["predict", tmp_path / "astronaut.jpg", "--out", tmp_path / "p",
                              "--threads", "1"], monkeypatch, capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "p" / "predictions.json").read_text())["rows"]
    assert len(rows) == 1
    assert iou((rows[0]["x"], rows[0]["y"], rows[0]["w"], rows[0]["h"]), ASTRONAUT_FACE) > 0.5
    assert json.loads((tmp_path / "p" / "predictions.json").read_text())["bundle"] == str(
        SHIPPED_BUNDLE)


def test_a_damaged_copy_of_the_shipped_bundle_is_refused(tmp_path, monkeypatch, capsys):
    copy = Path(shutil.copytree(SHIPPED_BUNDLE, tmp_path / "copy.ferens"))
    weights = copy / "members" / "0" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    cv2.imwrite(str(tmp_path / "a.png"), astronaut_bgr())
    code, _, err = run_cli(["predict", tmp_path / "a.png", "--model", copy], monkeypatch, capsys)
    assert code == 2 and "corrupted" in err and "Traceback" not in err


@pytest.mark.skipif(not REAL_DATA.is_file(), reason="real FER2013 data not present")
def test_ferens_evaluate_reproduces_the_published_privatetest_accuracy(monkeypatch, capsys,
                                                                       tmp_path):
    code, out, err = run_cli(["evaluate", "--data", REAL_DATA, "--split", "test", "--out",
                              tmp_path / "m.json", "--threads", "1"], monkeypatch, capsys)
    assert code == 0, err
    published = ferens.load_model().provenance["test_accuracy"]
    assert json.loads((tmp_path / "m.json").read_text())["accuracy"] == pytest.approx(
        published, abs=1e-9)
