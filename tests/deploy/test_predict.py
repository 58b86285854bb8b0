"""Tests for `ferens export` / `ferens predict`: bundles, face detection and per-file skips."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import fer_rows, run_cli, write_fer_csv
from trained_helpers import ASTRONAUT_FACE, REAL_DATA, astronaut_bgr, iou, tiny_member

from ferens.classes import CLASS_NAMES
from ferens.combine.adjust import adjust_run
from ferens.combine.ensemble import METHODS, build_ensemble
from ferens.data.fer2013 import load_fer2013
from ferens.deploy.bundle import FORMAT_VERSION, load_bundle
from ferens.deploy.export import export_bundle
from ferens.deploy.face_cascades import haar_available
from ferens.deploy.face_mtcnn import mtcnn_available
from ferens.deploy.faces import face_detector
from ferens.deploy.predict import predict_images
from ferens.deploy.writers import save_face_crops
from ferens.errors import FerensError
from ferens.runs import load_predictions, load_run, save_predictions

DETECTORS_HERE = ["lbp", *(["haar"] if haar_available() else []),
                  *(["mtcnn"] if mtcnn_available() else [])]


@dataclass
class Workspace:
    root: Path
    member_a: Path
    member_b: Path
    bundle: Path
    test_images: np.ndarray
    test_row_ids: np.ndarray


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("predict")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERENS_CACHE", str(root / "cache"))
        csv = write_fer_csv(root / "fer2013.csv",
                            fer_rows({"Training": 6, "PublicTest": 2, "PrivateTest": 2}))
        a = tiny_member(root, csv, "a", tta="flip")
        b = tiny_member(root, csv, "b", tta="none", stem="s2", channels_last=False, seed=1)
        test = load_fer2013(csv).split("test")
    bundle = export_bundle(a, root / "a.ferens", onnx=True)
    return Workspace(root, a, b, bundle, test.images, test.row_ids)


def boxes_of(frame: pd.DataFrame) -> list[tuple]:
    return [tuple(r) for r in frame[["x", "y", "w", "h"]].itertuples(index=False)]


def assert_found_exactly(frame: pd.DataFrame, truth: list[tuple], min_iou: float = 0.5) -> None:
    """One detection per true face, each overlapping its face by at least `min_iou`."""
    found = boxes_of(frame)
    assert len(found) == len(truth), found
    for box in truth:
        assert max(iou(box, f) for f in found) >= min_iou, (box, found)


def test_no_detect_predictions_on_saved_test_crops_equal_the_runs_saved_probabilities(ws, tmp_path):
    paths = save_face_crops(ws.test_images, tmp_path / "crops")
    frame = predict_images(load_bundle(ws.bundle), [tmp_path / "crops"], detect=False,
                           batch_size=5)
    saved = load_run(ws.member_a).test
    assert np.array_equal(saved.row_ids, ws.test_row_ids)
    assert frame["file"].tolist() == [str(p) for p in paths]
    assert np.abs(frame[list(CLASS_NAMES)].to_numpy() - saved.probs).max() < 1e-5
    assert (frame[["x", "y", "w", "h"]].to_numpy() == [0, 0, 48, 48]).all()
    assert frame["top_class"].tolist() == [CLASS_NAMES[i] for i in saved.predicted]


@pytest.mark.parametrize("method", METHODS)
def test_ensemble_bundle_reproduces_the_ensembles_saved_test_probabilities(ws, tmp_path, method):
    ens = build_ensemble([ws.member_a, ws.member_b], method=method, out=tmp_path / "ens",
                         temperature=method in ("weighted", "stack"))
    bundle = load_bundle(export_bundle(ens.path, tmp_path / "ens.ferens"))
    assert bundle.manifest["method"] == method and len(bundle.members) == 2
    assert np.array_equal(ens.test.row_ids, ws.test_row_ids)
    assert np.abs(bundle.predict_proba(ws.test_images) - ens.test.probs).max() < 1e-5


def test_stack_bundle_is_exported_from_saved_parameters_without_member_val_predictions(
        ws, tmp_path):
    members = [shutil.copytree(m, tmp_path / m.name) for m in (ws.member_a, ws.member_b)]
    ens = build_ensemble(members, method="stack", out=tmp_path / "ens", temperature=True)
    for path in [*members, ens.path]:
        (path / "predictions" / "val.npz").unlink()
    bundle = load_bundle(export_bundle(ens.path, tmp_path / "ens.ferens"))
    assert bundle.manifest["combiner"]["stacker"] == ens.summary["details"]["stacker"]
    assert np.abs(bundle.predict_proba(ws.test_images) - ens.test.probs).max() < 1e-5


def _as_older_ferens_wrote_it(ens: Path) -> None:
    """An ensemble as ferens wrote them before fitted.json (the ones under results/): its
    parameters only in summary.json, and config.json naming no fitted.json."""
    (ens / "fitted.json").unlink()
    config = json.loads((ens / "config.json").read_text())
    del config["fitted"]
    (ens / "config.json").write_text(json.dumps(config))


def test_older_stack_ensemble_without_saved_stacker_asks_to_rebuild_it(ws, tmp_path):
    ens = build_ensemble([ws.member_a, ws.member_b], method="stack", out=tmp_path / "ens")
    _as_older_ferens_wrote_it(ens.path)
    summary = json.loads((ens.path / "summary.json").read_text())
    del summary["details"]["stacker"]
    (ens.path / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(FerensError, match="rebuild the ensemble"):
        export_bundle(ens.path, tmp_path / "ens.ferens")


@pytest.mark.parametrize("method", ["weighted", "stack"])
def test_export_reads_the_fitted_parameters_from_fitted_json(ws, tmp_path, method):
    ens = build_ensemble([ws.member_a, ws.member_b], method=method, out=tmp_path / "ens",
                         temperature=True)
    fitted = json.loads((ens.path / "fitted.json").read_text())
    summary = json.loads((ens.path / "summary.json").read_text())
    summary["details"], summary["temperatures"] = {}, None  # the report's copy, spoiled
    (ens.path / "summary.json").write_text(json.dumps(summary))
    bundle = load_bundle(export_bundle(ens.path, tmp_path / "ens.ferens"))
    node = bundle.manifest["combiner"]
    assert node["temperatures"] == fitted["temperature"]["temperatures_"]
    assert np.abs(bundle.predict_proba(ws.test_images) - ens.test.probs).max() < 1e-5


def test_export_of_a_new_ensemble_without_its_fitted_json_is_one_line_exit_2(
        ws, tmp_path, monkeypatch, capsys):
    ens = build_ensemble([ws.member_a, ws.member_b], method="weighted", out=tmp_path / "ens")
    (ens.path / "fitted.json").unlink()
    with pytest.raises(FerensError, match=r"fitted\.json: file not found"):
        export_bundle(ens.path, tmp_path / "ens.ferens")
    code, _, err = run_cli(["export", ens.path, "--out", tmp_path / "cli.ferens"],
                           monkeypatch, capsys)
    assert code == 2
    err = err.strip()
    assert "fitted.json: file not found" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ens.ferens").exists() and not (tmp_path / "cli.ferens").exists()


@pytest.mark.parametrize("method", ["greedy", "stack"])
def test_an_ensemble_older_than_fitted_json_still_exports(ws, tmp_path, method):
    ens = build_ensemble([ws.member_a, ws.member_b], method=method, out=tmp_path / "ens",
                         temperature=True)
    _as_older_ferens_wrote_it(ens.path)
    bundle = load_bundle(export_bundle(ens.path, tmp_path / "ens.ferens"))
    assert np.abs(bundle.predict_proba(ws.test_images) - ens.test.probs).max() < 1e-5


def test_nested_ensemble_exports_its_tree_of_members(ws, tmp_path):
    inner = build_ensemble([ws.member_a, ws.member_b], "weighted", out=tmp_path / "inner")
    outer = build_ensemble([inner.path, ws.member_a], "logit-mean", out=tmp_path / "outer")
    bundle = load_bundle(export_bundle(outer.path, tmp_path / "outer.ferens"))
    assert len(bundle.members) == 2
    assert np.abs(bundle.predict_proba(ws.test_images) - outer.test.probs).max() < 1e-5


def test_logit_adjusted_member_and_ensemble_bundles_reproduce_their_saved_probabilities(
        ws, tmp_path):
    members = [shutil.copytree(m, tmp_path / m.name) for m in (ws.member_a, ws.member_b)]
    for member in members:  # a skewed val prior, so the adjustment is not the identity
        val = load_predictions(member / "predictions" / "val.npz")
        skewed = np.where(np.arange(len(val.labels)) % 7 == 0, val.labels, 3)
        skewed[:7] = np.arange(7)
        save_predictions(member / "predictions" / "val.npz", replace(val, labels=skewed))
    ens = build_ensemble(members, "weighted", out=tmp_path / "ens")
    for source in (members[0], ens.path):
        adjusted = adjust_run(source, tmp_path / f"adj-{source.name}", tau=0.7)
        assert np.abs(adjusted.test.probs - load_run(source).test.probs).max() > 1e-3
        bundle = load_bundle(export_bundle(adjusted.path, tmp_path / f"{source.name}.ferens"))
        assert bundle.manifest["kind"] == "adjusted"
        assert np.abs(bundle.predict_proba(ws.test_images) - adjusted.test.probs).max() < 1e-5


def test_onnx_runtime_and_pytorch_probabilities_agree_within_1e_4(ws):
    bundle = load_bundle(ws.bundle)
    faces = np.concatenate([ws.test_images, np.random.default_rng(0).integers(
        0, 256, (5, 48, 48), dtype=np.uint8)])
    torch_p = bundle.predict_proba(faces, backend="torch")
    onnx_p = bundle.predict_proba(faces, backend="onnx", batch_size=7)
    assert np.abs(torch_p - onnx_p).max() < 1e-4


@pytest.mark.parametrize("detector", DETECTORS_HERE)
def test_astronaut_photo_gets_one_face_overlapping_the_true_face(ws, tmp_path, detector):
    cv2.imwrite(str(tmp_path / "astronaut.png"), astronaut_bgr())
    frame = predict_images(load_bundle(ws.bundle), [tmp_path / "astronaut.png"],
                           detector=detector)
    assert_found_exactly(frame, [ASTRONAUT_FACE])
    assert np.allclose(frame[list(CLASS_NAMES)].sum(axis=1), 1.0)
    assert frame.attrs["skipped"] == []


def paste(canvas: np.ndarray, patch: np.ndarray, x: int, y: int, side: int) -> None:
    canvas[y:y + side, x:x + side] = cv2.resize(patch, (side, side),
                                                interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize("detector", DETECTORS_HERE)
def test_astronaut_face_pasted_at_known_places_and_scales_is_found(ws, tmp_path, detector):
    x, y, w, h = ASTRONAUT_FACE
    pad = 20
    crop = cv2.cvtColor(astronaut_bgr(), cv2.COLOR_BGR2GRAY)[y - pad:y + h + pad,
                                                             x - pad:x + w + pad]
    crop = cv2.resize(crop, (w + 2 * pad, w + 2 * pad))
    canvas = np.full((420, 760), 90, np.uint8)
    truth = []
    for (cx, cy), side in (((30, 40), 140), ((250, 120), 280), ((600, 250), 110)):
        paste(canvas, crop, cx, cy, side)
        scale = side / (w + 2 * pad)
        truth.append((cx + round(pad * scale), cy + round(pad * scale), round(w * scale),
                      round(w * scale)))
    cv2.imwrite(str(tmp_path / "scene.png"), canvas)
    frame = predict_images(load_bundle(ws.bundle), [tmp_path / "scene.png"], detector=detector)
    assert_found_exactly(frame, truth)


@pytest.mark.skipif(not REAL_DATA.is_file(), reason="real FER2013 data not present")
@pytest.mark.parametrize("detector", DETECTORS_HERE)
def test_fer2013_faces_pasted_into_a_larger_canvas_are_found_at_their_places(ws, tmp_path,
                                                                             detector):
    rows = pd.read_csv(REAL_DATA, nrows=6).iloc[[0, 2, 4, 5]]
    faces = [np.array(p.split(), np.uint8).reshape(48, 48) for p in rows["pixels"]]
    canvas = np.full((480, 720), 128, np.uint8)
    truth = []
    for k, face in enumerate(faces):
        x, y = 40 + (k % 3) * 230, 40 + (k // 3) * 230
        paste(canvas, face, x, y, 160)
        truth.append((x, y, 160, 160))
    cv2.imwrite(str(tmp_path / "fer_canvas.png"), canvas)
    frame = predict_images(load_bundle(ws.bundle), [tmp_path / "fer_canvas.png"],
                           detector=detector)
    assert_found_exactly(frame, truth)


def bad_inputs(folder: Path) -> list[Path]:
    """A good photo, then a corrupt image, a non-image, a faceless image, an empty file, a miss."""
    folder.mkdir()
    cv2.imwrite(str(folder / "astronaut.jpg"), astronaut_bgr())
    good = (folder / "astronaut.jpg").read_bytes()
    (folder / "corrupt.jpg").write_bytes(good[:200] + bytes(range(256)) * 4)
    (folder / "notes.txt").write_text("not an image\n")
    cv2.imwrite(str(folder / "blank.png"), np.full((200, 300, 3), 200, np.uint8))
    (folder / "empty.png").write_bytes(b"")
    return [folder / "astronaut.jpg", folder / "corrupt.jpg", folder / "notes.txt",
            folder / "blank.png", folder / "empty.png", folder / "missing.png"]


def test_bad_files_are_skipped_with_reasons_while_the_others_get_predictions(ws, tmp_path):
    frame = predict_images(load_bundle(ws.bundle), bad_inputs(tmp_path / "in"),
                           annotate_dir=tmp_path / "annotated")
    assert frame["file"].unique().tolist() == [str(tmp_path / "in" / "astronaut.jpg")]
    reasons = {Path(s["file"]).name: s["reason"] for s in frame.attrs["skipped"]}
    assert reasons == {"corrupt.jpg": "not an image", "notes.txt": "not an image",
                       "blank.png": "no face found", "empty.png": "not an image",
                       "missing.png": "not found"}
    summary = frame.attrs["summary"]
    assert summary["skipped_by_reason"] == {"not found": 1, "not an image": 3, "no face found": 1}
    assert summary["inputs"] == 6 and summary["faces"] == 1
    assert cv2.imread(str(tmp_path / "annotated" / "astronaut.png")).shape == (512, 512, 3)


def test_folders_expand_to_image_files_and_any_size_becomes_a_48x48_face(ws, tmp_path):
    folder = tmp_path / "faces"
    (folder / "sub").mkdir(parents=True)
    face = ws.test_images[0]
    cv2.imwrite(str(folder / "small.png"), face)
    cv2.imwrite(str(folder / "sub" / "big.jpg"), cv2.cvtColor(
        cv2.resize(face, (200, 160)), cv2.COLOR_GRAY2BGR))
    (folder / "readme.md").write_text("ignored: not an image suffix\n")
    frame = predict_images(load_bundle(ws.bundle), [folder], detect=False)
    assert [Path(f).name for f in frame["file"]] == ["small.png", "big.jpg"]
    assert boxes_of(frame) == [(0, 0, 48, 48), (0, 0, 200, 160)]
    assert frame.attrs["skipped"] == []


def test_cli_export_and_predict_write_csv_json_annotations_and_print_skips(
        ws, tmp_path, monkeypatch, capsys):
    code, out, _ = run_cli(["export", ws.member_a, "--out", tmp_path / "m.ferens"], monkeypatch,
                           capsys)
    assert code == 0 and "member a" in out
    inputs = bad_inputs(tmp_path / "in")
    code, out, err = run_cli(["predict", *inputs, "--model", tmp_path / "m.ferens", "--out",
                              tmp_path / "pred", "--annotate", "--threads", "1"], monkeypatch,
                             capsys)
    assert code == 0, err
    assert "skipped 5 (1 not found, 3 not an image, 1 no face found)" in out
    assert "blank.png: no face found" in out
    table = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert table.columns.tolist() == ["file", "face", "frame", "time_s", "x", "y", "w", "h",
                                      *CLASS_NAMES, "top_class", "top_prob"]
    assert len(table) == 1 and table["top_class"].iloc[0] in CLASS_NAMES
    payload = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert len(payload["rows"]) == 1 and len(payload["skipped"]) == 5
    assert (tmp_path / "pred" / "annotated" / "astronaut.png").is_file()


def damage_version(bundle: Path) -> str:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return "format version 2"


def damage_weights(bundle: Path) -> str:
    weights = bundle / "members" / "0" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return "corrupted"


def damage_one_byte(bundle: Path) -> str:
    """One flipped bit in the middle of the tensor data: the file still parses as safetensors
    (a weight changes silently), so only the manifest's SHA-256 can catch it."""
    from safetensors.numpy import load_file

    weights = bundle / "members" / "0" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    assert load_file(str(weights))
    return "SHA-256 differs from the manifest"


def damage_missing(bundle: Path) -> str:
    (bundle / "members" / "0" / "config.json").unlink()
    return "missing from the bundle"


def damage_manifest(bundle: Path) -> str:
    (bundle / "manifest.json").write_text('{"format": "ferens-bundle", "format_')
    return "corrupted manifest"


@pytest.mark.parametrize("damage", [damage_version, damage_weights, damage_one_byte,
                                    damage_missing, damage_manifest])
def test_bundle_of_another_format_version_or_damaged_is_rejected_clearly(
        ws, tmp_path, monkeypatch, capsys, damage):
    bundle = shutil.copytree(ws.bundle, tmp_path / "bundle")
    message = damage(bundle)
    with pytest.raises(FerensError, match=message):
        load_bundle(bundle)
    code, _, err = run_cli(["predict", tmp_path, "--model", bundle], monkeypatch, capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_export_refuses_to_overwrite_a_folder_that_is_not_a_bundle(ws, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "data.txt").write_text("keep me")
    with pytest.raises(FerensError, match="is not a bundle written by .ferens export."):
        export_bundle(ws.member_a, tmp_path / "precious")
    assert (tmp_path / "precious" / "data.txt").read_text() == "keep me"
    again = export_bundle(ws.member_a, ws.root / "a.ferens", onnx=True)
    assert load_bundle(again).manifest["kind"] == "member"


@pytest.mark.skipif(haar_available(), reason="this OpenCV has the Haar cascades")
def test_asking_for_haar_on_an_opencv_without_cascades_says_what_to_do():
    with pytest.raises(FerensError, match="opencv-python-headless<5"):
        face_detector("haar")


def test_tta_override_changes_the_views_of_every_member_and_none_restores_them(ws, tmp_path):
    faces = ws.test_images
    mirrored = faces[:, :, ::-1].copy()
    own = load_bundle(export_bundle(ws.member_b, tmp_path / "b.ferens"))  # trained tta=none
    assert own.tta is None
    assert np.abs(own.predict_proba(faces) - own.predict_proba(mirrored)).max() > 1e-4
    flip = own.with_tta("flip")  # a face and its mirror give the same two views
    assert np.abs(flip.predict_proba(faces) - flip.predict_proba(mirrored)).max() < 1e-5
    assert np.array_equal(flip.with_tta(None).predict_proba(faces), own.predict_proba(faces))
    with pytest.raises(FerensError, match="tta='ten': expected one of"):
        own.with_tta("ten")
    with pytest.raises(FerensError, match="trained on whole 48 px faces, not crops"):
        own.with_tta("tencrop")


def test_cli_predict_with_tta_records_it_and_refuses_an_unknown_one(ws, tmp_path, monkeypatch,
                                                                    capsys):
    crops = tmp_path / "crops"
    save_face_crops(ws.test_images[:3], crops)
    code, _, err = run_cli(["predict", crops, "--no-detect", "--model", ws.bundle, "--tta",
                            "none", "--out", tmp_path / "pred"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "pred" / "predictions.json").read_text())["summary"]
    assert summary["tta"] == "none"
    code, _, err = run_cli(["predict", crops, "--no-detect", "--model", ws.bundle, "--tta",
                            "sideways", "--out", tmp_path / "bad"], monkeypatch, capsys)
    assert code == 2 and "tta='sideways': expected one of" in err
    assert "Traceback" not in err and not (tmp_path / "bad").exists()
