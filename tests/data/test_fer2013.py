from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import fer_rows, run_cli, synthetic_faces, write_fer_csv
from PIL import Image

from ferens.data.fer2013 import (
    FERPLUS_VOTES,
    apply_ferplus_labels,
    ferplus_majority,
    load_fer2013,
)
from ferens.errors import FerensError

REAL_DATA = Path(__file__).resolve().parents[3] / "shared/data/fer2013/fer2013.csv.gz"


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_csv_loads_into_official_splits_with_stable_row_ids(tmp_path, tiny_rows, suffix):
    path = write_fer_csv(tmp_path / f"fer2013{suffix}", tiny_rows)
    ds = load_fer2013(path)
    assert ds.images.shape == (len(tiny_rows), 48, 48) and ds.images.dtype == np.uint8
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [42, 14, 14]
    test = ds.split("test")
    assert test.row_ids.tolist() == list(range(56, 70))
    first = np.array(tiny_rows[56][1].split(), dtype=np.uint8).reshape(48, 48)
    assert np.array_equal(test.images[0], first)
    assert test.class_counts().tolist() == [2] * 7


def test_second_load_comes_from_the_cache(tiny_csv, monkeypatch):
    first = load_fer2013(tiny_csv)
    monkeypatch.setattr("ferens.data.fer2013._parse_csv", lambda path: pytest.fail("parsed twice"))
    second = load_fer2013(tiny_csv)
    assert np.array_equal(first.images, second.images)
    assert np.array_equal(first.usage, second.usage)


def _corrupt(rows, index, label=None, pixels=None, usage=None):
    rows = list(rows)
    old = rows[index]
    rows[index] = (old[0] if label is None else label, old[1] if pixels is None else pixels,
                   old[2] if usage is None else usage)
    return rows


@pytest.mark.parametrize("change, message", [
    (dict(label=7), "label '7' is not in 0-6"),
    (dict(label="x"), "label 'x' is not in 0-6"),
    (dict(usage="Validation"), "unknown Usage 'Validation'"),
    (dict(pixels="1 2 3"), "expected 2304 pixel values (48x48), found 3"),
    (dict(pixels="12 " * 2303 + "4a"), "non-numeric pixel value '4a'"),
    (dict(pixels="12 " * 2303 + "256"), "pixel value 256 is outside 0-255"),
    (dict(pixels="12 " * 2303 + "-3"), "non-numeric pixel value '-3'"),
])
def test_malformed_csv_row_is_named_with_file_row_and_problem(tmp_path, tiny_rows, change,
                                                              message, monkeypatch, capsys):
    path = write_fer_csv(tmp_path / "bad.csv", _corrupt(tiny_rows, 5, **change))
    code, _, err = run_cli(["train-member", "--data", path, "--out-dir", tmp_path / "runs",
                            "--epochs", "1", "--quiet"], monkeypatch, capsys)
    assert code == 2
    assert str(path) in err and "row 5 (line 7)" in err and message in err
    assert "Traceback" not in err


def test_missing_column_is_reported(tmp_path, tiny_rows):
    path = write_fer_csv(tmp_path / "bad.csv", tiny_rows, header="label,pixels,Usage")
    with pytest.raises(FerensError, match=r"bad.csv: missing column\(s\) \['emotion'\]"):
        load_fer2013(path)


def test_empty_split_is_an_error(tmp_path):
    rows = [r for r in fer_rows({"Training": 2, "PublicTest": 1, "PrivateTest": 1})
            if r[2] != "PublicTest"]
    ds = load_fer2013(write_fer_csv(tmp_path / "fer.csv", rows))
    with pytest.raises(FerensError, match=r"split val \(PublicTest\) is empty"):
        ds.split("val")


def test_missing_data_file_says_how_to_point_at_it(tmp_path):
    with pytest.raises(FerensError, match="--data PATH or set FERENS_DATA"):
        load_fer2013(tmp_path / "nope.csv")


def _write_folder(root: Path, names: dict[str, int], size: int = 48) -> None:
    for file_name, label in names.items():
        top = "train" if file_name.startswith("Training") else "test"
        folder = root / top / ["angry", "disgust", "fear", "happy", "sad", "surprise",
                               "neutral"][label]
        folder.mkdir(parents=True, exist_ok=True)
        img = synthetic_faces(np.array([label]))[0]
        Image.fromarray(img).resize((size, size)).save(folder / file_name)


def test_image_folder_recovers_kaggle_splits_from_file_prefixes(tmp_path):
    names = {f"{u}_{i}.png": i % 7 for u in ("Training", "PublicTest", "PrivateTest")
             for i in range(7)}
    _write_folder(tmp_path, names)
    ds = load_fer2013(tmp_path)
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [7, 7, 7]
    assert ds.split("val").class_counts().tolist() == [1] * 7


def test_image_folder_rejects_mixed_sizes_and_unreadable_images(tmp_path):
    _write_folder(tmp_path / "a", {"Training_1.png": 0, "Training_2.png": 1})
    _write_folder(tmp_path / "a", {"Training_3.png": 1}, size=64)
    with pytest.raises(FerensError, match=r"Training_3.png: image is 64x64 but .*Training_1.png "
                                          r"is 48x48; every face in the folder must have one"):
        load_fer2013(tmp_path / "a")
    _write_folder(tmp_path / "b", {"Training_1.png": 0})
    bad = tmp_path / "b" / "train" / "happy" / "Training_2.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(FerensError, match=r"Training_2.jpg: unreadable image"):
        load_fer2013(tmp_path / "b")


def _votes(rows: list[list[int]], usage: list[str] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(FERPLUS_VOTES))
    frame.insert(0, "Usage", usage if usage is not None else "Training")
    return frame


def test_ferplus_majority_maps_to_fer_classes_and_flags_the_rest():
    #            neu hap sur sad ang dis fea con unk NF
    votes = _votes([[0, 0, 0, 0, 8, 1, 1, 0, 0, 0],   # anger -> 0
                    [6, 4, 0, 0, 0, 0, 0, 0, 0, 0],   # neutral -> 6
                    [0, 5, 5, 0, 0, 0, 0, 0, 0, 0],   # tie
                    [0, 0, 0, 0, 0, 0, 0, 7, 3, 0],   # contempt
                    [0, 0, 0, 0, 0, 0, 0, 0, 2, 8],   # not a face
                    [1, 0, 0, 0, 0, 0, 0, 0, 9, 0]])  # unknown
    labels, kind = ferplus_majority(votes)
    assert labels.tolist() == [0, 6, -1, -1, -1, -1]
    assert kind.tolist() == ["emotion", "emotion", "tie", "contempt", "not_a_face", "unknown"]


def test_ferplus_labels_replace_fer_labels_and_drop_unclear_rows(tmp_path):
    rows = fer_rows({"Training": 1, "PublicTest": 1, "PrivateTest": 1})
    ds = load_fer2013(write_fer_csv(tmp_path / "fer.csv", rows))
    votes = _votes([[0, 10, 0, 0, 0, 0, 0, 0, 0, 0]] * len(rows), [r[2] for r in rows])
    votes.loc[3, list(FERPLUS_VOTES)] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]
    votes.to_csv(tmp_path / "ferplus.csv", index=False)
    relabelled = apply_ferplus_labels(ds, tmp_path / "ferplus.csv")
    assert 3 not in relabelled.row_ids and len(relabelled) == len(rows) - 1
    assert set(relabelled.labels.tolist()) == {3}


@pytest.mark.skipif(not REAL_DATA.is_file(), reason="real FER2013 not present")
def test_real_fer2013_has_the_canonical_splits_and_class_counts():
    ds = load_fer2013(REAL_DATA)
    counts = {s: ds.split(s).class_counts().tolist() for s in ("train", "val", "test")}
    assert counts == {"train": [3995, 436, 4097, 7215, 4830, 3171, 4965],
                      "val": [467, 56, 496, 895, 653, 415, 607],
                      "test": [491, 55, 528, 879, 594, 416, 626]}


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("rows_per_block", [5, 2048])
def test_fast_byte_parser_agrees_with_the_validating_parser(tmp_path, tiny_rows, newline,
                                                            rows_per_block, monkeypatch):
    from ferens.data.fer2013 import _parse_canonical_bytes, _parse_csv_validating

    monkeypatch.setattr("ferens.data.fer2013.ROWS_PER_BLOCK", rows_per_block)

    text = "emotion,pixels,Usage" + newline + "".join(
        f"{a},{b},{c}{newline}" for a, b, c in tiny_rows)
    raw = text.encode()
    images, labels, usage = _parse_canonical_bytes(raw)
    slow = _parse_csv_validating(tmp_path / "x.csv", raw)
    assert np.array_equal(images, slow.images) and np.array_equal(labels, slow.labels)
    assert np.array_equal(usage, slow.usage)
    assert _parse_canonical_bytes(raw.replace(b",Training", b",Train", 1)) is None
    assert _parse_canonical_bytes(raw.replace(b" ", b"  1 ", 1)) is None


def _happy_votes(path: Path, usage: list[str]) -> Path:
    _votes([[0, 10, 0, 0, 0, 0, 0, 0, 0, 0]] * len(usage), usage).to_csv(path, index=False)
    return path


def test_ferplus_labels_refuse_an_image_folder_whose_row_ids_are_file_positions(tmp_path):
    _write_folder(tmp_path / "data", {f"{u}_{i}.png": i % 7 for u in ("PublicTest", "Training",
                                                                        "PrivateTest")
                                      for i in range(7)})
    ds = load_fer2013(tmp_path / "data")
    # even where FER+'s Usage happens to match the file order, file i is not CSV row i
    votes = _happy_votes(tmp_path / "fer2013new.csv", ds.usage.tolist())
    with pytest.raises(FerensError, match="image folder"):
        apply_ferplus_labels(ds, votes)


def test_ferplus_labels_check_every_row_against_the_ferplus_usage(tmp_path):
    rows = fer_rows({"Training": 1, "PublicTest": 1, "PrivateTest": 1})
    ds = load_fer2013(write_fer_csv(tmp_path / "fer.csv", rows))
    usage = [r[2] for r in rows]
    usage[9] = "Training"  # a PublicTest row of this CSV is a Training row in FER+
    with pytest.raises(FerensError, match=r"row 9 is 'Training' in FER\+ but 'PublicTest'"):
        apply_ferplus_labels(ds, _happy_votes(tmp_path / "fer2013new.csv", usage))


@pytest.mark.parametrize("damage", ["bad deflate stream", "truncated", "bad checksum"])
def test_a_corrupt_gz_is_one_line_and_exit_code_2(tmp_path, tiny_rows, damage, monkeypatch,
                                                   capsys):
    raw = write_fer_csv(tmp_path / "fer2013.csv.gz", tiny_rows).read_bytes()
    bad = {"bad deflate stream": raw[:40] + bytes(20) + raw[60:],
           "truncated": raw[:len(raw) // 2],
           "bad checksum": raw[:-8] + bytes(4) + raw[-4:]}[damage]
    path = tmp_path / "bad.csv.gz"
    path.write_bytes(bad)
    with pytest.raises(FerensError, match="bad.csv.gz: cannot read"):
        load_fer2013(path)
    code, _, err = run_cli(["train-member", "--data", path, "--name", "m", "--out-dir",
                            tmp_path / "runs", "--epochs", "1", "--quiet"], monkeypatch, capsys)
    assert code == 2 and err.startswith("ferens: error:") and err.count("\n") == 1
    assert not (tmp_path / "runs" / "m").exists()
    from helpers import make_run, synthetic_predictions

    run = make_run(tmp_path, "run", synthetic_predictions(14, 0.5, seed=0, first_row=56))
    code, _, err = run_cli(["report", run, "--out", tmp_path / "report", "--data", path],
                           monkeypatch, capsys)
    assert code == 2 and "bad.csv.gz: cannot read" in err and err.count("\n") == 1
    assert not (tmp_path / "report").exists()


def test_a_utf8_bom_at_the_start_of_a_csv_is_accepted(tmp_path, tiny_rows):
    plain = load_fer2013(write_fer_csv(tmp_path / "plain.csv", tiny_rows), cache=False)
    for name in ("bom.csv", "bom.csv.gz"):
        path = write_fer_csv(tmp_path / name, tiny_rows)
        raw = path.read_bytes()
        text = gzip.decompress(raw) if name.endswith(".gz") else raw
        path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + text) if name.endswith(".gz")
                         else b"\xef\xbb\xbf" + text)
        ds = load_fer2013(path, cache=False)
        assert np.array_equal(ds.images, plain.images) and np.array_equal(ds.labels, plain.labels)
    bad = _corrupt(tiny_rows, 5, label=9)  # the validating parser reads past the BOM too
    path = write_fer_csv(tmp_path / "bad.csv", bad)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    with pytest.raises(FerensError, match=r"row 5 \(line 7\): label '9'"):
        load_fer2013(path, cache=False)


def test_a_ferplus_label_member_says_that_val_and_test_are_relabelled_too(
        tmp_path, tiny_csv, tiny_rows, monkeypatch, capsys):
    votes = _happy_votes(tmp_path / "fer2013new.csv", [r[2] for r in tiny_rows])
    code, out, err = run_cli(["train-member", "--data", tiny_csv, "--labels", "ferplus",
                              "--ferplus", votes, "--name", "fp", "--out-dir", tmp_path / "runs",
                              "--epochs", "1", "--width", "0.25", "--threads", "1", "--quiet"],
                             monkeypatch, capsys)
    assert code == 0, err
    assert "FER+ labels on every split: val and test are relabelled and filtered too" in out


# --- issue 28: inputs that would exhaust memory or hang ----------------------------------

def test_an_image_folder_with_one_decompression_bomb_is_one_line(tmp_path, monkeypatch,
                                                                 capsys):
    from conftest import png_bomb

    names = {f"{u}_{i}.png": i % 7 for u in ("Training", "PublicTest", "PrivateTest")
             for i in range(7)}
    _write_folder(tmp_path / "faces", names)
    png_bomb(tmp_path / "faces" / "train" / "happy" / "Training_bomb.png", 60000, 60000)
    with pytest.raises(FerensError, match=r"Training_bomb.png: image declares more pixels"):
        load_fer2013(tmp_path / "faces")
    png_bomb(tmp_path / "faces" / "train" / "happy" / "Training_bomb.png", 10000, 10000)
    decoded = []
    real_convert = Image.Image.convert
    monkeypatch.setattr(Image.Image, "convert",
                        lambda im, *a, **k: decoded.append(im.size) or real_convert(im, *a, **k))
    with pytest.raises(FerensError, match=r"Training_bomb.png: image is 10000x10000"):
        load_fer2013(tmp_path / "faces")  # under PIL's own limit: refused from its header
    assert (10000, 10000) not in decoded
    code, _, err = run_cli(["train-member", "--name", "m", "--data", tmp_path / "faces",
                            "--out-dir", tmp_path / "runs", "--epochs", "1", "--quiet"],
                           monkeypatch, capsys)
    assert code == 2 and err.startswith("ferens: error:") and err.count("\n") == 1, err


def test_a_gz_that_inflates_past_any_fer2013_csv_is_refused_unread(tmp_path, tiny_rows,
                                                                   monkeypatch, capsys):
    import ferens.data.fer2013 as data_module

    monkeypatch.setattr(data_module, "MAX_CSV_BYTES", 2**20)  # the real limit is 1 GiB
    text = write_fer_csv(tmp_path / "ok.csv", tiny_rows).read_bytes()
    bomb = tmp_path / "bomb.csv.gz"
    bomb.write_bytes(gzip.compress(text + b"0," + b"0 " * (16 * 2**20) + b",Training\n",
                                   compresslevel=1))  # ~100 KB inflating to 32 MiB
    inflated = []
    real_read = gzip.GzipFile.read
    monkeypatch.setattr(gzip.GzipFile, "read", lambda self, size=-1: inflated.append(
        size) or real_read(self, size))
    with pytest.raises(FerensError, match=r"bomb.csv.gz: inflates to more than 1 MiB"):
        load_fer2013(bomb, cache=False)
    assert inflated and all(0 < size <= 2**20 + 1 for size in inflated)
    plain = tmp_path / "big.csv"
    plain.write_bytes(gzip.decompress(bomb.read_bytes()))
    code, _, err = run_cli(["train-member", "--data", plain, "--out-dir", tmp_path / "runs",
                            "--epochs", "1", "--quiet"], monkeypatch, capsys)
    assert code == 2 and "more than a FER2013 CSV can be" in err and err.count("\n") == 1, err
    assert len(load_fer2013(tmp_path / "ok.csv", cache=False)) == len(tiny_rows)


@pytest.fixture
def alarm():
    """Fail instead of hanging forever (an open() of a FIFO blocks until a writer comes)."""
    import signal

    def hung(signum, frame):
        raise TimeoutError("ferens blocked on the file")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("command", ["train-member", "evaluate", "report"])
def test_data_that_is_a_fifo_or_device_is_refused_before_reading(tmp_path, kind, command,
                                                                 alarm, monkeypatch, capsys):
    import os

    if kind == "fifo":
        data = tmp_path / "fer2013.csv"
        os.mkfifo(data)
    else:
        data = Path("/dev/zero")
    from helpers import make_run, synthetic_predictions

    args = {"train-member": ["train-member", "--data", data, "--out-dir", tmp_path / "runs",
                             "--epochs", "1", "--quiet"],
            "evaluate": ["evaluate", "--data", data],
            "report": ["report", make_run(tmp_path, "run", synthetic_predictions(
                14, 0.5, seed=0, first_row=56)), "--out", tmp_path / "rep", "--data", data],
            }[command]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and "not a regular file" in err and err.count("\n") == 1, err
