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
from conftest import run_cli
from trained_helpers import _predict, astronaut_bgr, tiny_member_on_its_own_csv

from ferens.deploy.bundle import load_bundle
from ferens.deploy.export import export_bundle
from ferens.deploy.predict import predict_images
from ferens.errors import FerensError


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    return tiny_member_on_its_own_csv(tmp_path_factory, "safety")


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
    from ferens.data.fer2013 import file_sha256

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
    import ferens.deploy.predict as predict_module

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


# --- one line and exit code 2, never a traceback (issue 15, item 6) ---------------------------

def _one_line_error(code: int, err: str) -> None:
    assert code == 2, err
    assert err.startswith("ferens: error:") and err.count("\n") == 1, err


def _edit_manifest(bundle: Path, edit) -> None:
    manifest = _manifest(bundle)
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _set_combiner(node):
    return lambda m: m.__setitem__("combiner", node)


LEAF = {"member": 0}
BAD_STACKER = {"classes": [0], "mean": [0.0], "scale": [1.0], "coef": [[1.0]],
               "intercept": [0.0]}
DAMAGED_COMBINERS = {
    "member out of range": _set_combiner({"member": 1}),
    "negative member": _set_combiner({"member": -1}),
    "member not a number": _set_combiner({"member": True}),
    "no method": _set_combiner({"inputs": [LEAF, LEAF]}),
    "unknown method": _set_combiner({"method": "vote", "inputs": [LEAF, LEAF]}),
    "no inputs": _set_combiner({"method": "logit-mean"}),
    "no weights": _set_combiner({"method": "weighted", "inputs": [LEAF, LEAF]}),
    "weights of another length": _set_combiner({"method": "weighted", "inputs": [LEAF, LEAF],
                                                "weights": [1.0, 1.0, 1.0]}),
    "stacker of another shape": _set_combiner({"method": "stack", "inputs": [LEAF, LEAF],
                                               "stacker": BAD_STACKER}),
    "temperatures of another length": _set_combiner({"method": "logit-mean",
                                                     "inputs": [LEAF, LEAF],
                                                     "temperatures": [1.0]}),
    "adjust without a prior": _set_combiner({"adjust": {"tau": 1.0}, "inputs": [LEAF]}),
    "combiner not a table": _set_combiner("mean"),
    "member entry not a table": lambda m: m.__setitem__("members", ["model.safetensors"]),
    "files not a table": lambda m: m["members"][0].__setitem__("files", ["config.json"]),
    "class names not a list": lambda m: m.__setitem__("class_names", 7),
}


@pytest.mark.parametrize("damage", list(DAMAGED_COMBINERS))
def test_a_bundle_with_a_damaged_combiner_is_one_line(bundle, face_png, tmp_path, damage,
                                                      monkeypatch, capsys):
    _edit_manifest(bundle, DAMAGED_COMBINERS[damage])
    code, _, err = run_cli(_predict(bundle, face_png, tmp_path / "out"), monkeypatch, capsys)
    _one_line_error(code, err)
    assert "manifest.json" in err
    assert not (tmp_path / "out").exists()


def test_a_combiner_reusing_one_member_still_loads(bundle, face_png, tmp_path, monkeypatch,
                                                   capsys):
    _edit_manifest(bundle, _set_combiner({"method": "weighted", "inputs": [LEAF, LEAF],
                                          "weights": [0.5, 0.5]}))
    code, _, err = run_cli(_predict(bundle, face_png, tmp_path / "out"), monkeypatch, capsys)
    assert code == 0, err


@pytest.fixture(scope="module")
def onnx_bundle(member, tmp_path_factory):
    return export_bundle(member, tmp_path_factory.mktemp("onnx") / "b.ferens", onnx=True)


@pytest.mark.parametrize("content", [b"garbage" * 10, b""], ids=["garbage", "empty"])
def test_a_bundle_with_a_damaged_onnx_file_is_one_line(onnx_bundle, face_png, tmp_path,
                                                       content, monkeypatch, capsys):
    from ferens.data.fer2013 import file_sha256

    damaged = tmp_path / "b.ferens"
    shutil.copytree(onnx_bundle, damaged)
    onnx = damaged / "members" / "0" / "model.onnx"
    onnx.write_bytes(content)  # with its checksum updated: damaged when it was written
    _edit_manifest(damaged, lambda m: m["members"][0]["files"].__setitem__(
        "model.onnx", file_sha256(onnx)))
    code, _, err = run_cli(_predict(damaged, face_png, tmp_path / "out", "--backend", "onnx"),
                           monkeypatch, capsys)
    _one_line_error(code, err)
    assert "model.onnx" in err


def test_a_batch_size_of_zero_is_one_line(bundle, face_png, tmp_path, monkeypatch, capsys):
    for flag in ("--batch-size", "--detect-every"):
        code, _, err = run_cli(_predict(bundle, face_png, tmp_path / "out", flag, "0"),
                               monkeypatch, capsys)
        _one_line_error(code, err)
        assert flag in err


@pytest.mark.parametrize("command", ["ensemble", "adjust", "report", "export", "predict",
                                     "evaluate", "train-member"])
@pytest.mark.parametrize("where", ["is a file", "is under a file"])
def test_an_out_that_is_a_file_is_one_line(member, bundle, face_png, tmp_path, command, where,
                                          monkeypatch, capsys):
    from helpers import complementary_members

    blocker = tmp_path / "notes.txt"
    blocker.write_text("the user's file")
    out = blocker if where == "is a file" else blocker / "out"
    runs = complementary_members(tmp_path / "m")
    data = Path(json.loads((member / "config.json").read_text())["data"])
    args = {"ensemble": ["ensemble", *runs, "--out", out],
            "adjust": ["adjust", runs[0], "--out", out],
            "report": ["report", runs[0], "--out", out],
            "export": ["export", member, "--out", out],
            "predict": _predict(bundle, face_png, out),
            "evaluate": ["evaluate", "--model", bundle, "--data", data, "--out",
                         tmp_path if where == "is a file" else out],
            "train-member": ["train-member", "--data", data, "--out-dir", out, "--epochs", "1",
                             "--width", "0.25", "--quiet"]}[command]
    code, _, err = run_cli(args, monkeypatch, capsys)
    _one_line_error(code, err)
    assert blocker.read_text() == "the user's file"


def test_exporting_a_member_with_truncated_weights_fails_at_export(member, tmp_path):
    broken = tmp_path / "runs" / "m"
    shutil.copytree(member, broken)
    weights = broken / "best.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    for half in (False, True):
        with pytest.raises(FerensError, match="best.safetensors: cannot load weights"):
            export_bundle(broken, tmp_path / "b.ferens", half=half)
    assert not (tmp_path / "b.ferens").exists()


# --- issue 28: file safety ----------------------------------------------------------------

@pytest.mark.parametrize("sub", ["annotated", "timelines"])
def test_predict_never_deletes_a_users_file_inside_its_subfolders(bundle, face_png, tmp_path,
                                                                  sub, monkeypatch, capsys):
    out = tmp_path / "out"
    for _ in range(2):  # its own output, annotated images included, is replaced
        code, _, err = run_cli(_predict(bundle, face_png, out, "--annotate"), monkeypatch,
                               capsys)
        assert code == 0, err
    assert (out / "annotated" / "face.png").is_file()
    assert "annotated/face.png" in json.loads((out / "predictions.json").read_text())["files"]
    (out / sub).mkdir(exist_ok=True)
    (out / sub / "mine.png").write_bytes(b"the user's picture")
    code, _, err = run_cli(_predict(bundle, face_png, out), monkeypatch, capsys)
    _one_line_error(code, err)
    assert "refusing to replace it" in err
    assert (out / sub / "mine.png").read_bytes() == b"the user's picture"


def _rewrite_member_file(bundle: Path, name: str, content: bytes) -> None:
    """Replace a member file and its checksum, as a tamperer who knows the format would."""
    from ferens.data.fer2013 import file_sha256

    path = bundle / "members" / "0" / name
    path.write_bytes(content)
    _edit_manifest(bundle, lambda m: m["members"][0]["files"].__setitem__(
        name, file_sha256(path)))


def test_a_member_declaring_a_huge_model_in_range_is_refused_before_building_it(bundle,
                                                                               monkeypatch):
    import torch

    import ferens.models.inference as inference

    config = json.loads((bundle / "members" / "0" / "config.json").read_text())
    _rewrite_member_file(bundle, "config.json", json.dumps(
        config | {"model": "resnet152", "width": 8}).encode())  # ~15 GB, within the ranges
    real = inference.create_member_model

    def only_on_meta(name, *args, **kwargs):
        if torch.get_default_device().type != "meta":
            raise AssertionError(f"{name} was built for real before its weights were checked")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(inference, "create_member_model", only_on_meta)
    with pytest.raises(FerensError, match="do not fit the model its config declares"):
        load_bundle(bundle)


@pytest.mark.parametrize("extra", [
    {"files": {"/etc/passwd": "0" * 64}},
    {"extra_files": {"../../outside.json": "0" * 64}},
], ids=["absolute", "dotdot"])
@pytest.mark.parametrize("where", ["top", "member"])
def test_a_manifest_stating_anything_but_the_bundles_own_files_is_refused(
        bundle, face_png, tmp_path, extra, where, monkeypatch, capsys):
    key, value = next(iter(extra.items()))
    if where == "top":
        _edit_manifest(bundle, lambda m: m.__setitem__(key, value))
    else:
        _edit_manifest(bundle, lambda m: m["members"][0].__setitem__(
            key if key != "files" else "more_files", value))
    code, _, err = run_cli(_predict(bundle, face_png, tmp_path / "out"), monkeypatch, capsys)
    _one_line_error(code, err)
    assert "manifest.json" in err and "unknown key" in err


def test_a_manifest_listing_a_file_the_bundle_does_not_hold_is_refused(bundle):
    (bundle / "members" / "0" / "model.onnx").unlink(missing_ok=True)
    _edit_manifest(bundle, lambda m: m["members"][0]["files"].__setitem__("model.onnx",
                                                                          "0" * 64))
    with pytest.raises(FerensError, match="model.onnx: missing from the bundle"):
        load_bundle(bundle)


@pytest.mark.parametrize("link", ["members", "members/0"])
def test_a_linked_members_folder_is_refused_before_anything_outside_is_opened(
        bundle, tmp_path, link, monkeypatch):
    import builtins
    import io

    outside = tmp_path / "outside"
    shutil.move(bundle / link, outside)
    (bundle / link).symlink_to(outside)
    opened = []
    real_open = builtins.open

    def recording_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    monkeypatch.setattr(io, "open", recording_open)  # pathlib's read_text
    messages = []
    for damage in ("none", "remove weights"):  # the message tells nothing about the target
        if damage == "remove weights":
            next(outside.rglob("model.safetensors")).unlink()
        with pytest.raises(FerensError, match="is a link") as caught:
            load_bundle(bundle)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    assert not [f for f in opened if f.startswith(str(outside))]


def _no_decoding_of(monkeypatch, size: int) -> None:
    """Make any attempt to decode a buffer of ``size`` bytes (or to read a file whole) fail."""
    real = cv2.imdecode

    def imdecode(buf, flags):
        if len(buf) == size:
            raise AssertionError("the oversized image was handed to the decoder")
        return real(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", imdecode)
    monkeypatch.setattr(Path, "read_bytes", lambda self: (_ for _ in ()).throw(
        AssertionError(f"{self} was read whole")))


def test_a_decompression_bomb_is_skipped_from_its_header_without_decoding(bundle, tmp_path,
                                                                          monkeypatch):
    from conftest import png_bomb

    bomb = png_bomb(tmp_path / "bomb.png", 60000, 60000)  # 3.6 GP in a few hundred bytes
    cv2.imwrite(str(tmp_path / "ok.png"), astronaut_bgr())
    _no_decoding_of(monkeypatch, bomb.stat().st_size)
    frame = predict_images(load_bundle(bundle), [bomb, tmp_path / "ok.png"])
    assert [(Path(s["file"]).name, s["reason"]) for s in frame.attrs["skipped"]] == [
        ("bomb.png", "too large")]
    assert len(frame) == 1


def test_a_huge_file_is_skipped_by_its_size_before_it_is_read(bundle, tmp_path, monkeypatch):
    huge = tmp_path / "huge.png"
    cv2.imwrite(str(huge), np.zeros((48, 48), np.uint8))
    os.truncate(huge, 3 * 2**30)  # 3 GB (sparse: no disk used)
    _no_decoding_of(monkeypatch, 3 * 2**30)
    frame = predict_images(load_bundle(bundle), [huge])
    skipped = frame.attrs["skipped"]
    assert [s["reason"] for s in skipped] == ["too large"] and "MiB" in skipped[0]["detail"]
