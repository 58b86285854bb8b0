"""Videos in `ferens predict`, `ferens evaluate`, and the model API (`ferens.load_model`)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import fer_rows, run_cli, write_fer_csv
from sklearn.metrics import accuracy_score, f1_score, recall_score
from trained_helpers import ASTRONAUT_FACE, FRAMES, astronaut_bgr, iou, write_video
from trained_helpers import bundle as bundle  # a fixture

from ferens.classes import CLASS_NAMES
from ferens.data.fer2013 import load_fer2013
from ferens.deploy.bundle import load_bundle
from ferens.deploy.evaluate import evaluate_bundle
from ferens.deploy.predict import predict_images
from ferens.deploy.shipped import load_model


def test_a_video_gives_sampled_frame_rows_times_a_summary_and_a_timeline(bundle, tmp_path,
                                                                         monkeypatch, capsys):
    truth = write_video(tmp_path / "clip.avi")
    frame = predict_images(load_bundle(bundle), [tmp_path / "clip.avi"], every=5)
    assert frame["frame"].tolist() == [0, 5, 10, 15]
    assert frame["time_s"].tolist() == [0.0, 0.5, 1.0, 1.5]
    for (_, row), i in zip(frame.iterrows(), [0, 5, 10, 15], strict=True):
        assert iou(tuple(row[["x", "y", "w", "h"]]), truth[i]) > 0.5
    summary = frame.attrs["videos"][str(tmp_path / "clip.avi")]
    shares = frame["top_class"].value_counts(normalize=True)
    assert summary["share"] == {c: pytest.approx(shares.get(c, 0.0)) for c in CLASS_NAMES}
    assert summary["dominant"] == shares.idxmax() and summary["faces"] == 4
    assert summary["frames_sampled"] == 4
    code, out, err = run_cli(["predict", tmp_path / "clip.avi", "--model", bundle, "--fps", "2",
                              "--out", tmp_path / "out"], monkeypatch, capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert table["frame"].tolist() == [0, 5, 10, 15]  # 10 fps video sampled at 2 fps
    payload = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert payload["videos"][str(tmp_path / "clip.avi")]["faces"] == 4
    assert (tmp_path / "out" / "timelines" / "clip.png").is_file()
    assert "clip.avi: 2.0 s, 4 frames sampled, 4 with a face: mostly" in out


def test_detecting_on_every_kth_frame_reuses_the_boxes_in_between(bundle, tmp_path):
    write_video(tmp_path / "clip.avi")
    frame = predict_images(load_bundle(bundle), [tmp_path / "clip.avi"], every=1,
                           detect_every=4)
    boxes = frame[["x", "y", "w", "h"]].to_numpy()
    assert len(frame) == FRAMES
    assert (boxes[1:4] == boxes[0]).all() and not (boxes[4] == boxes[0]).all()


def test_broken_videos_are_skipped_with_a_reason_and_the_rest_goes_on(bundle, tmp_path):
    write_video(tmp_path / "good.avi")
    raw = (tmp_path / "good.avi").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(raw[:600])
    (tmp_path / "text.webm").write_text("not a video")
    write_video(tmp_path / "empty.avi", face_from=FRAMES)  # no face in any frame
    frame = predict_images(load_bundle(bundle), [tmp_path], every=10)
    assert set(frame["file"]) == {str(tmp_path / "good.avi")}
    reasons = {s["file"].split("/")[-1]: s["reason"] for s in frame.attrs["skipped"]}
    assert reasons == {"truncated.mp4": "not a video", "text.webm": "not a video",
                       "empty.avi": "no face found"}


def test_evaluate_agrees_with_scikit_learn_on_the_same_predictions(bundle, tmp_path,
                                                                   monkeypatch, capsys):
    csv = write_fer_csv(tmp_path / "labelled.csv",
                        fer_rows({"Training": 2, "PublicTest": 3, "PrivateTest": 4}, seed=5))
    loaded = load_bundle(bundle)
    metrics = evaluate_bundle(loaded, str(csv), "test")
    test = load_fer2013(csv).split("test")
    predicted = loaded.predict_proba(test.images).argmax(1)
    assert metrics["rows"] == 28
    assert metrics["accuracy"] == pytest.approx(accuracy_score(test.labels, predicted))
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(test.labels, predicted, average="macro", labels=range(7), zero_division=0))
    recall = recall_score(test.labels, predicted, average=None, labels=range(7),
                          zero_division=0)
    assert list(metrics["per_class_recall"].values()) == pytest.approx(list(recall))
    code, out, err = run_cli(["evaluate", "--model", bundle, "--data", csv, "--split", "val",
                              "--out", tmp_path / "m.json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "m.json").read_text())["rows"] == 21 and "accuracy" in out
    code, out, err = run_cli(["evaluate", "--model", bundle, "--data", csv, "--tta", "shift",
                              "--out", tmp_path / "shift.json"], monkeypatch, capsys)
    shifted = json.loads((tmp_path / "shift.json").read_text())
    assert code == 0 and shifted["tta"] == "shift" and metrics["tta"] == "members' own"
    expected = loaded.with_tta("shift").predict_proba(test.images).argmax(1)
    assert shifted["accuracy"] == pytest.approx(accuracy_score(test.labels, expected))


def test_load_model_predicts_faces_and_whole_images(bundle, tmp_path):
    model = load_model(bundle)
    assert model.bundle.manifest["weights_dtype"] == "float16"
    rows = model.predict_image(astronaut_bgr())
    assert len(rows) == 1 and iou(tuple(rows.iloc[0][["x", "y", "w", "h"]]),
                                  ASTRONAUT_FACE) > 0.5
    assert np.isclose(rows[list(CLASS_NAMES)].to_numpy().sum(), 1)
    faces = np.zeros((3, 48, 48), np.uint8)
    assert model.predict_proba(faces).shape == (3, 7)
    assert model.predict_image(np.full((200, 200), 90, np.uint8)).empty
    faces = load_fer2013(write_fer_csv(tmp_path / "f.csv", fer_rows(
        {"Training": 1, "PublicTest": 1, "PrivateTest": 1}))).images
    fewer = load_model(bundle, tta="none")  # one view instead of the member's flip
    assert fewer.bundle.tta == "none"
    assert np.allclose(fewer.predict_proba(faces),
                       model.bundle.with_tta("none").predict_proba(faces))
    assert not np.allclose(fewer.predict_proba(faces), model.predict_proba(faces))
