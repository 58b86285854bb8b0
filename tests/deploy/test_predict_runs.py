"""`ferens predict` runs as a user makes them (issue 25): --annotate beside a video, a run where
nothing could be read, and what a video's summary says."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
from conftest import run_cli
from trained_helpers import FPS, astronaut_bgr, write_video
from trained_helpers import bundle as bundle  # a fixture

from ferens.deploy.bundle import load_bundle
from ferens.deploy.predict import predict_images


def files_of(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_annotate_with_a_video_among_the_inputs_annotates_the_photos_and_notes_the_video(
        bundle, tmp_path, monkeypatch, capsys):  # noqa: F811
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_video(inputs / "clip.avi")
    cv2.imwrite(str(inputs / "astronaut.png"), astronaut_bgr())
    code, out, err = run_cli(["predict", inputs, "--model", bundle, "--annotate", "--every", "5",
                              "--out", tmp_path / "pred"], monkeypatch, capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert (table["file"] == str(inputs / "clip.avi")).sum() == 4
    assert (table["file"] == str(inputs / "astronaut.png")).sum() == 1
    annotated = sorted(p.name for p in (tmp_path / "pred" / "annotated").iterdir())
    assert annotated == ["astronaut.png"]
    assert "--annotate draws on images only; not annotated: clip.avi" in out
    payload = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert payload["summary"]["not_annotated"] == [str(inputs / "clip.avi")]


def test_a_run_with_no_readable_input_exits_2_and_leaves_the_earlier_output_untouched(
        bundle, tmp_path, monkeypatch, capsys):  # noqa: F811
    cv2.imwrite(str(tmp_path / "astronaut.png"), astronaut_bgr())
    out = tmp_path / "pred"
    code, _, err = run_cli(["predict", tmp_path / "astronaut.png", "--model", bundle, "--out",
                            out, "--annotate"], monkeypatch, capsys)
    assert code == 0, err
    before = files_of(out)
    assert len(pd.read_csv(out / "predictions.csv")) == 1
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "empty").mkdir()
    for inputs in ([tmp_path / "missing.jpg"], [tmp_path / "notes.txt", tmp_path / "gone.png"],
                   [tmp_path / "empty"]):
        code, stdout, err = run_cli(["predict", *inputs, "--model", bundle, "--out", out],
                                    monkeypatch, capsys)
        assert code == 2, (inputs, stdout, err)
        assert "no readable input" in err and "Traceback" not in err
        assert files_of(out) == before
    code, _, err = run_cli(["predict", tmp_path / "missing.jpg", "--model", bundle, "--out",
                            out], monkeypatch, capsys)
    assert "missing.jpg: not found" in err
    # a readable photo without a face is an answer (no rows), not a failed run
    cv2.imwrite(str(tmp_path / "blank.png"), np.full((200, 300, 3), 200, np.uint8))
    code, _, err = run_cli(["predict", tmp_path / "blank.png", "--model", bundle, "--out", out],
                           monkeypatch, capsys)
    assert code == 0, err
    assert pd.read_csv(out / "predictions.csv").empty


def test_a_video_summary_gives_its_real_duration_frames_sampled_and_frames_with_a_face(
        bundle, tmp_path, monkeypatch, capsys):  # noqa: F811
    clip = tmp_path / "clip.avi"
    write_video(clip, frames=4 * FPS, face_until=2 * FPS)  # 4 s; a face in the first 2 s
    frame = predict_images(load_bundle(bundle), [clip], every=2)
    summary = frame.attrs["videos"][str(clip)]
    assert summary["duration_s"] == 4.0
    assert summary["frames"] == 40 and summary["frames_sampled"] == 20
    assert summary["frames_with_faces"] == 10 and summary["faces"] == 10
    code, out, err = run_cli(["predict", clip, "--model", bundle, "--every", "2", "--out",
                              tmp_path / "pred"], monkeypatch, capsys)
    assert code == 0, err
    assert "clip.avi: 4.0 s, 20 frames sampled, 10 with a face: mostly" in out
    payload = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert payload["videos"][str(clip)]["duration_s"] == 4.0
