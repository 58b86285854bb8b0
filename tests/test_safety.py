"""Issue 15, bundles and predict: never delete a user's files, never read outside a bundle,
limits on untrusted input, and one bad file never stops a batch."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import fer_rows, run_cli, write_fer_csv
from test_predict import astronaut_bgr, tiny_member

from ferens.bundle import export_bundle, load_bundle
from ferens.errors import FerensError
from ferens.predict import predict_images


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERENS_CACHE", str(root / "cache"))
        csv = write_fer_csv(root / "fer2013.csv",
                            fer_rows({"Training": 6, "PublicTest": 2, "PrivateTest": 2}))
        return tiny_member(root, csv, "m")


@pytest.fixture
def bundle(member, tmp_path):
    return export_bundle(member, tmp_path / "b.ferens")


def test_export_never_replaces_a_folder_that_is_not_its_own_bundle(member, tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "manifest.json").write_text('{"name": "my web app"}')
    (app / "index.html").write_text("<h1>mine</h1>")
    with pytest.raises(FerensError, match="refusing"):
        export_bundle(member, app)
    assert (app / "index.html").read_text() == "<h1>mine</h1>"
    real = export_bundle(member, tmp_path / "b.ferens")
    (real / "notes.txt").write_text("user notes")  # a bundle the user added files to
    with pytest.raises(FerensError, match="refusing"):
        export_bundle(member, real)
    assert (real / "notes.txt").is_file()


def test_export_leaves_sibling_folders_alone_and_replaces_its_own_bundle(member, tmp_path):
    sibling = tmp_path / "photos.tmp"
    sibling.mkdir()
    (sibling / "keep.jpg").write_bytes(b"x")
    export_bundle(member, tmp_path / "photos")
    export_bundle(member, tmp_path / "photos")  # its own earlier output: replaced
    assert (sibling / "keep.jpg").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "photos.tmp"]


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


@pytest.mark.parametrize("name", ["../../outside.json", "/etc/passwd", "sub/config.json"])
def test_a_bundle_only_opens_its_own_file_names(bundle, tmp_path, name):
    manifest = _manifest(bundle)
    files = manifest["members"][0]["files"]
    files[name] = files.pop("config.json")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FerensError, match="not a file a bundle may contain"):
        load_bundle(bundle)


def test_a_bundle_never_follows_links(bundle, tmp_path):
    weights = bundle / "members" / "0" / "model.safetensors"
    outside = tmp_path / "outside.safetensors"
    shutil.move(weights, outside)
    weights.symlink_to(outside)
    with pytest.raises(FerensError, match="link"):
        load_bundle(bundle)


def test_a_bundle_declaring_a_huge_model_is_refused_before_allocating(bundle):
    config = bundle / "members" / "0" / "config.json"
    values = json.loads(config.read_text()) | {"width": 64}
    config.write_text(json.dumps(values))
    manifest = _manifest(bundle)
    from ferens.data import file_sha256

    manifest["members"][0]["files"]["config.json"] = file_sha256(config)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FerensError, match="width=64 is outside"):
        load_bundle(bundle)


def test_images_over_the_pixel_limit_are_skipped_from_their_header(bundle, tmp_path,
                                                                   monkeypatch):
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((500, 600), np.uint8))
    cv2.imwrite(str(tmp_path / "ok.png"), astronaut_bgr())
    real = cv2.imdecode
    decoded = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(1) or real(*a))
    frame = predict_images(load_bundle(bundle), [tmp_path / "big.png", tmp_path / "ok.png"],
                           max_pixels=280_000)  # the 512x512 astronaut is under it
    assert [s["reason"] for s in frame.attrs["skipped"]] == ["too large"]
    assert "600x500" in frame.attrs["skipped"][0]["detail"]
    assert len(decoded) == 1 and len(frame) == 1  # only the astronaut was decoded


def test_one_failing_image_does_not_stop_the_batch(bundle, tmp_path, monkeypatch):
    cv2.imwrite(str(tmp_path / "a_thin.png"), np.full((1, 10000), 128, np.uint8))
    cv2.imwrite(str(tmp_path / "b_ok.png"), astronaut_bgr())
    cv2.imwrite(str(tmp_path / "c_boom.png"), astronaut_bgr())
    import ferens.predict as predict_module

    real = predict_module.crop_face

    def boom(gray, box, margin):
        if gray.shape == (512, 512) and boom.calls:
            raise cv2.error("simulated OpenCV failure")
        boom.calls += 1
        return real(gray, box, margin)

    boom.calls = 0
    monkeypatch.setattr(predict_module, "crop_face", boom)
    frame = predict_images(load_bundle(bundle), [tmp_path])
    assert frame["file"].tolist() == [str(tmp_path / "b_ok.png")]
    reasons = {Path(s["file"]).name: s["reason"] for s in frame.attrs["skipped"]}
    assert reasons["c_boom.png"] == "failed" and reasons["a_thin.png"] == "no face found"


def test_a_fifo_or_device_is_skipped_without_reading_it(bundle, tmp_path, monkeypatch, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    cv2.imwrite(str(tmp_path / "ok.png"), astronaut_bgr())
    code, out, err = run_cli(["predict", fifo, tmp_path / "ok.png", "--model", bundle, "--out",
                              tmp_path / "out"], monkeypatch, capsys)
    assert code == 0, err
    assert "pipe.png: unreadable (not a regular file)" in out
