"""Issue 26, part 4: experiments/transfer_demo.py end to end at the smallest size (smoke mode):
it builds the FER+ eight-class folder from a FER2013 CSV and FER+ votes, trains every start,
and writes a table whose numbers are the runs' own."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import fer_rows, write_fer_csv

from ferens.data.fer2013 import FERPLUS_TO_FER, FERPLUS_VOTES

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "transfer_demo.py"


def _demo():
    spec = importlib.util.spec_from_file_location("transfer_demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _votes(rows: list[tuple]) -> pd.DataFrame:
    """FER+ votes agreeing with each row's FER2013 label, except that every split's first
    two rows of class 0 are contempt, one more is a tie and one is not a face."""
    column = {v: k for k, v in FERPLUS_TO_FER.items()}
    counts = np.zeros((len(rows), len(FERPLUS_VOTES)), int)
    seen: dict[str, int] = {}
    for i, (label, _, usage) in enumerate(rows):
        counts[i, FERPLUS_VOTES.index(column[label])] = 8
        if label == 0:
            seen[usage] = seen.get(usage, 0) + 1
            k = seen[usage]
            if k <= 2:
                counts[i] = 0
                counts[i, FERPLUS_VOTES.index("contempt")] = 7
            elif k == 3:
                counts[i, FERPLUS_VOTES.index("happiness")] = 8  # a tie: dropped
            elif k == 4:
                counts[i, FERPLUS_VOTES.index("NF")] = 9          # not a face: dropped
    frame = pd.DataFrame(counts, columns=list(FERPLUS_VOTES))
    frame.insert(0, "Usage", [u for _, _, u in rows])
    return frame


def test_the_demo_builds_the_folder_trains_every_start_and_reports_their_numbers(
        tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch"))
    rows = fer_rows({"Training": 6, "PublicTest": 5, "PrivateTest": 5})
    fer = write_fer_csv(tmp_path / "fer2013.csv", rows)
    _votes(rows).to_csv(tmp_path / "fer2013new.csv", index=False)
    demo = _demo()
    args = ["--fer2013", str(fer), "--ferplus", str(tmp_path / "fer2013new.csv"),
            "--folder", str(tmp_path / "folder"), "--runs", str(tmp_path / "runs"),
            "--out", str(tmp_path / "out"), "--train-rows", "0", "--epochs", "1",
            "--seeds", "0", "--smoke"]
    assert demo.main(args) == 0
    built = json.loads((tmp_path / "folder" / demo.MARKER).read_text())
    # 6 per class, class 0 loses 4 rows (2 contempt, 1 tie, 1 not a face) in Training
    assert built["rows"]["train"] == {"Angry": 2, "Contempt": 2, "Disgust": 6, "Fear": 6,
                                      "Happy": 6, "Neutral": 6, "Sad": 6, "Surprise": 6}
    assert sorted(p.name for p in (tmp_path / "folder" / "test").iterdir()) == sorted(
        built["rows"]["test"])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["name"] for r in results["runs"]] == ["scratch-s0", "shipped-s0",
                                                    "shipped-lr0.1-s0"]
    table = (tmp_path / "out" / "table.md").read_text()
    for r in results["runs"]:
        summary = json.loads((tmp_path / "runs" / r["name"] / "summary.json").read_text())
        assert r["test"]["accuracy"] == summary["test"]["accuracy"]
        assert f"| {r['name']} | {r['arm']} | 0 | {summary['test']['accuracy']:.4f} |" in table
        assert (tmp_path / "out" / "members" / r["name"] / "predictions" / "test.npz").is_file()
        assert len(summary["test"]["per_class_recall"]) == 8
    shipped = json.loads((tmp_path / "runs" / "shipped-s0" / "summary.json").read_text())
    assert shipped["init"]["head"] == "replaced"
    assert "timm ImageNet row: not run: no local copy" in table
    baseline = results["shipped_without_training"]
    assert baseline["per_class_recall"]["Contempt"] == 0.0  # the shipped model has no such class
    assert f"| shipped model, no training | (its 7 classes, ten-crop) | - | " \
           f"{baseline['accuracy']:.4f} |" in table
    assert demo.main(args) == 0  # the folder (its marker matches) and the runs are reused
    (tmp_path / "other").mkdir()
    assert demo.main([*args[:4], "--folder", str(tmp_path / "other"), *args[6:]]) == 2


@pytest.mark.skipif(not Path("/work/shared/data/ferplus/fer2013new.csv").is_file(),
                    reason="needs the real FER+ votes")
def test_the_real_ferplus_eight_class_labels_keep_contempt():
    demo = _demo()
    ds, names = demo.ferplus_eight(Path("/work/shared/data/fer2013/fer2013.csv.gz"),
                                   Path("/work/shared/data/ferplus/fer2013new.csv"))
    assert set(names) == {"Angry", "Contempt", "Disgust", "Fear", "Happy", "Neutral", "Sad",
                          "Surprise"}
    assert (names == "Contempt").sum() > 100 and len(ds) == len(names)
