"""Issue 26, part 3: any labelled face folder (train/, optional val/ and test/ of <class>/
images, any class names), its class names carried through train-member, ensemble, adjust,
report, export, predict and evaluate, held-out splits, and every bad folder as one line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli, synthetic_faces, write_fer_csv
from PIL import Image

from ferens.data.fer2013 import FERPLUS_VOTES, load_fer2013
from ferens.errors import FerensError
from ferens.runs import load_predictions

CLASSES = ("calm", "joy", "rage")


def write_faces(root, counts: dict[str, int], classes=CLASSES, size: int = 48,
                colour: bool = False, seed: int = 0) -> None:
    """``root/<split>/<class>/<i>.png`` with ``counts[split]`` learnable faces per class."""
    for s, (split, n) in enumerate(counts.items()):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            faces = synthetic_faces(np.full(n, label % 7), seed=seed + 10 * s + label)
            for i, face in enumerate(faces):
                image = Image.fromarray(face).resize((size, size))
                (image.convert("RGB") if colour else image).save(folder / f"{i}.png")


@pytest.fixture
def faces(tmp_path):
    root = tmp_path / "faces"
    write_faces(root, {"train": 12, "val": 4, "test": 4})
    return root


def _train(args, tmp_path, monkeypatch, capsys, name):
    return run_cli(["train-member", "--name", name, "--out-dir", tmp_path / "runs",
                    "--epochs", "1", "--width", "0.25", "--threads", "1", "--batch-size", "16",
                    *args], monkeypatch, capsys)


def _one_line(code: int, err: str) -> str:
    assert code == 2 and err.startswith("ferens: error:") and err.count("\n") == 1, err
    return err


def test_a_three_class_folder_end_to_end(faces, tmp_path, monkeypatch, capsys):
    runs = []
    for seed in ("0", "1"):
        code, _, err = _train(["--data", faces, "--seed", seed, "--tta", "none"], tmp_path,
                              monkeypatch, capsys, f"m{seed}")
        assert code == 0, err
        runs.append(tmp_path / "runs" / f"m{seed}")
    # rows per split and per class, said at the start
    assert "3 classes, rows per train/val/test: calm 12/4/4, joy 12/4/4, rage 12/4/4" in err
    assert json.loads((runs[0] / "config.json").read_text())["classes"] == list(CLASSES)
    preds = load_predictions(runs[0] / "predictions" / "test.npz")
    assert preds.class_names == CLASSES and preds.logits.shape == (12, 3)
    assert preds.files[0] == "test/calm/0.png"
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert set(summary["test"]["per_class_recall"]) == set(CLASSES)
    # resuming a finished run with the classes filled in from the data is not "a changed config"
    assert _train(["--data", faces, "--seed", "0", "--tta", "none", "--resume"], tmp_path,
                  monkeypatch, capsys, "m0")[0] == 0

    assert run_cli(["ensemble", *runs, "--out", tmp_path / "ens", "--method", "weighted"],
                   monkeypatch, capsys)[0] == 0
    assert load_predictions(tmp_path / "ens" / "predictions" / "val.npz").class_names == CLASSES
    code, out, err = run_cli(["adjust", tmp_path / "ens", "--out", tmp_path / "adj"],
                             monkeypatch, capsys)
    assert code == 0, err
    assert "test recall: calm" in out

    votes = pd.DataFrame(np.ones((3, len(FERPLUS_VOTES)), int), columns=list(FERPLUS_VOTES))
    votes.insert(0, "Usage", "PrivateTest")
    votes.to_csv(tmp_path / "fer2013new.csv", index=False)
    code, out, err = run_cli(["report", *runs, tmp_path / "ens", tmp_path / "adj", "--out",
                              tmp_path / "report", "--data", faces, "--ferplus",
                              tmp_path / "fer2013new.csv"], monkeypatch, capsys)
    assert code == 0, err
    assert ("skipped the FER+ noise taxonomy and FER+ re-scoring: the runs predict ['calm', "
            "'joy', 'rage'], not FER2013's seven classes") in out
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["class_names"] == list(CLASSES) and metrics["ferplus"] is None
    assert metrics["duplicates"] is not None  # within the folder's own splits
    code, out, err = run_cli(["report", *runs, "--out", tmp_path / "report2", "--data",
                              _fer_csv(tmp_path)], monkeypatch, capsys)
    assert code == 0 and "the runs predict ['calm', 'joy', 'rage']" in out, out + err

    assert run_cli(["export", tmp_path / "adj", "--out", tmp_path / "model.ferens"],
                   monkeypatch, capsys)[0] == 0
    manifest = json.loads((tmp_path / "model.ferens" / "manifest.json").read_text())
    assert manifest["class_names"] == list(CLASSES)
    code, _, err = run_cli(["predict", faces / "test" / "joy", "--model", tmp_path / "model.ferens",
                            "--no-detect", "--out", tmp_path / "pred"], monkeypatch, capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert list(table.columns[8:]) == [*CLASSES, "top_class", "top_prob"]
    assert set(table["top_class"]) <= set(CLASSES) and len(table) == 4
    code, out, err = run_cli(["evaluate", "--model", tmp_path / "model.ferens", "--data", faces,
                              "--split", "test"], monkeypatch, capsys)
    assert code == 0, err
    assert "[test, 12 rows]" in out and "recall: calm" in out
    err = _one_line(*run_cli(["evaluate", "--model", tmp_path / "model.ferens", "--data",
                              _fer_csv(tmp_path)], monkeypatch, capsys)[::2])
    assert "are not the model's ['calm', 'joy', 'rage']" in err
    manifest["class_names"] = ["joy", "calm", "rage"]  # a manifest that lies about the order
    (tmp_path / "model.ferens" / "manifest.json").write_text(json.dumps(manifest))
    err = _one_line(*run_cli(["predict", faces / "test" / "joy", "--model",
                              tmp_path / "model.ferens", "--no-detect", "--out",
                              tmp_path / "pred2"], monkeypatch, capsys)[::2])
    assert "member 0 predicts the classes ['calm', 'joy', 'rage'], the manifest states" in err


def _fer_csv(tmp_path):
    from conftest import fer_rows

    path = tmp_path / "fer2013.csv"
    if not path.exists():
        write_fer_csv(path, fer_rows({"Training": 2, "PublicTest": 1, "PrivateTest": 1}))
    return path


def test_init_default_on_other_classes_replaces_the_head(faces, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["train-member", "--name", "ft", "--out-dir", tmp_path / "runs",
                            "--data", faces, "--init", "default", "--epochs", "1", "--threads",
                            "1", "--tta", "none"], monkeypatch, capsys)
    assert code == 0, err
    assert "the classifier head was replaced" in err
    summary = json.loads((tmp_path / "runs" / "ft" / "summary.json").read_text())
    assert summary["init"]["head"] == "replaced"
    assert "this data has 3 ['calm', 'joy', 'rage']" in summary["init"]["note"]


def test_val_and_test_fractions_hold_out_stratified_shares(tmp_path, monkeypatch, capsys):
    root = tmp_path / "faces"
    write_faces(root, {"train": 12})
    err = _one_line(*_train(["--data", root], tmp_path, monkeypatch, capsys, "a")[::2])
    assert "split val (PublicTest) is empty" in err and "--val-fraction F" in err
    code, _, err = _train(["--data", root, "--val-fraction", "0.25", "--test-fraction", "0.25",
                           "--tta", "none"], tmp_path, monkeypatch, capsys, "b")
    assert code == 0, err
    assert "calm 6/3/3, joy 6/3/3, rage 6/3/3" in err
    val = load_predictions(tmp_path / "runs" / "b" / "predictions" / "val.npz")
    test = load_predictions(tmp_path / "runs" / "b" / "predictions" / "test.npz")
    assert not set(val.files) & set(test.files)
    assert all(f.startswith("train/") for f in [*val.files, *test.files])
    write_faces(tmp_path / "with_val", {"train": 4, "val": 2, "test": 2})
    err = _one_line(*_train(["--data", tmp_path / "with_val", "--val-fraction", "0.2"],
                            tmp_path, monkeypatch, capsys, "c")[::2])
    assert "already has a val split (6 rows); --val-fraction is for an image folder" in err
    assert not (tmp_path / "runs" / "a").exists() and not (tmp_path / "runs" / "c").exists()


def _empty_class(root):
    (root / "train" / "sleepy").mkdir()
    return r"train/sleepy: empty class folder"


def _unreadable(root):
    (root / "train" / "joy" / "broken.png").write_bytes(b"\x89PNG not really")
    return r"train/joy/broken.png: unreadable image"


def _not_an_image(root):
    (root / "train" / "joy" / "notes.txt").write_text("hello")
    return r"train/joy/notes.txt: not an image file"


def _class_missing_from_train(root):
    write_faces(root, {"test": 1}, classes=("sleepy",))
    return r"test/sleepy: class 'sleepy' is in test/ but not in train/"


def _class_missing_from_val(root):
    for png in (root / "val" / "rage").iterdir():
        png.unlink()
    (root / "val" / "rage").rmdir()
    return r"val/ has no images of class 'rage'.*the splits must share one label set"


def _mixed_sizes(root):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "test" / "joy" / "big.png")
    return r"test/joy/big.png: image is 64x64 but .* is 48x48"


def _mixed_colour(root):
    Image.new("RGB", (48, 48), (10, 200, 30)).save(root / "val" / "calm" / "colour.png")
    return r"val/calm/colour.png: image is colour but .* is grayscale"


def _one_class(root):
    import shutil

    for split in ("train", "val", "test"):
        for name in ("joy", "rage"):
            shutil.rmtree(root / split / name)
    return r"train/ has one class only \('calm'\)"


def _file_in_split_folder(root):
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(root / "train" / "loose.png")
    return r"train/loose.png: a file directly in train/"


@pytest.mark.parametrize("damage", [_empty_class, _unreadable, _not_an_image,
                                    _class_missing_from_train, _class_missing_from_val,
                                    _mixed_sizes, _mixed_colour, _one_class,
                                    _file_in_split_folder])
def test_a_bad_folder_is_one_line_and_writes_nothing(faces, tmp_path, monkeypatch, capsys,
                                                     damage):
    expected = damage(faces)
    with pytest.raises(FerensError, match=expected):
        load_fer2013(faces)
    err = _one_line(*_train(["--data", faces], tmp_path, monkeypatch, capsys, "bad")[::2])
    assert "ferens: error:" in err
    assert not (tmp_path / "runs").exists()


def test_hidden_files_colour_and_other_sizes_are_read(tmp_path):
    write_faces(tmp_path / "c", {"train": 2, "test": 1}, size=96, colour=True)
    (tmp_path / "c" / "train" / "joy" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "c" / "README.txt").write_text("my faces")
    ds = load_fer2013(tmp_path / "c")
    assert ds.images.shape == (9, 48, 48) and ds.class_names == CLASSES
    assert ds.split("test").class_counts().tolist() == [1, 1, 1]
    with pytest.raises(FerensError, match=r"image is 60x48, not square"):
        Image.new("L", (60, 48)).save(tmp_path / "c" / "train" / "joy" / "wide.png")
        load_fer2013(tmp_path / "c")


def test_the_kaggle_fer2013_layout_keeps_fer2013s_names_and_order(tmp_path):
    kaggle = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    write_faces(tmp_path / "k", {"train": 1, "test": 1}, classes=kaggle)
    ds = load_fer2013(tmp_path / "k")
    assert ds.class_names == ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
    train = ds.split("train")
    assert {f.split("/")[1]: int(y) for f, y in zip(train.files, train.labels, strict=True)} == {
        name: i for i, name in enumerate(kaggle)}
