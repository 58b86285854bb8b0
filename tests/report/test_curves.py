"""Training curves in `ferens report`: numbers from each member's metrics.csv, curves.png and the
"Training curves" section; runs without the file (ensembles) get none, a broken file a note."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import make_run, synthetic_predictions

from ferens.report.build import compute_metrics, write_report
from ferens.runs import load_run

HEADER = ("epoch,train_loss,train_accuracy,val_loss,val_accuracy,val_macro_f1,lr,seconds,"
          "images_per_second,val_seconds")
# 20 epochs: val accuracy peaks at epoch 12 (0.62, and again at 15: the first counts), the
# last two epochs (the last 10%) reach 0.60 at best, the last is 0.59 (above epoch 18's 0.58)
VAL = [0.30, 0.40, 0.45, 0.50, 0.52, 0.54, 0.55, 0.57, 0.58, 0.59,
       0.61, 0.62, 0.60, 0.61, 0.62, 0.61, 0.60, 0.58, 0.60, 0.59]
TRAIN_LOSS = [1.9 - 0.05 * e for e in range(20)]
VAL_LOSS = [1.8 - 0.03 * e for e in range(20)]


def write_metrics_csv(run: Path, val: list[float], train_loss: list[float] | None = None,
                      val_loss: list[float] | None = None, blank_val_loss: int | None = None
                      ) -> Path:
    """A metrics.csv as `train-member` writes it; `blank_val_loss` leaves that row's cell
    empty."""
    train_loss = train_loss or [1.0] * len(val)
    val_loss = val_loss or [1.0] * len(val)
    lines = [HEADER]
    for e, (acc, tl, vl) in enumerate(zip(val, train_loss, val_loss, strict=True)):
        cell = "" if e == blank_val_loss else repr(vl)
        lines.append(f"{e + 1},{tl!r},0.5,{cell},{acc!r},0.4,0.001,10.0,100.0,1.0")
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    return run / "metrics.csv"


def member(root: Path, name: str, val: list[float] | None = None, seed: int = 0, **kwargs
           ) -> Path:
    run = make_run(root, name, synthetic_predictions(70, 0.5 + 0.02 * seed, seed=seed))
    if val is not None:
        write_metrics_csv(run, val, **kwargs)
    return run


def test_curve_numbers_are_those_of_the_metrics_csv(tmp_path):
    runs = [load_run(member(tmp_path, "peaked", VAL, train_loss=TRAIN_LOSS, val_loss=VAL_LOSS,
                            blank_val_loss=4)),
            load_run(member(tmp_path, "rising", [0.3 + 0.01 * e for e in range(25)], seed=1)),
            load_run(member(tmp_path, "ensemble", seed=2))]
    metrics = compute_metrics(runs, n_boot=20)
    curves = {c["name"]: c for c in metrics["curves"]}
    assert sorted(curves) == ["peaked", "rising"]  # the run without a metrics.csv has none

    peaked = curves["peaked"]
    assert peaked["epoch"] == list(range(1, 21))
    assert peaked["val_accuracy"] == VAL and peaked["train_loss"] == TRAIN_LOSS
    assert np.isnan(peaked["val_loss"][4])
    assert peaked["val_loss"][:4] + peaked["val_loss"][5:] == VAL_LOSS[:4] + VAL_LOSS[5:]
    assert peaked["n_epochs"] == 20 and peaked["tail_epochs"] == 2
    assert peaked["best_epoch"] == 12 and peaked["best_val_accuracy"] == 0.62
    assert peaked["last_val_accuracy"] == 0.59
    assert peaked["last_minus_best"] == pytest.approx(0.59 - 0.62)
    assert peaked["tail_gain"] == pytest.approx(0.60 - 0.62)  # no new best at the end

    rising = curves["rising"]  # 25 epochs, still improving: the last is the best
    assert rising["best_epoch"] == 25 and rising["last_minus_best"] == 0.0
    assert rising["tail_epochs"] == 3  # 10% of 25 epochs, rounded up
    assert rising["tail_gain"] == pytest.approx(0.01 * 24 - 0.01 * 21)
    assert not any("training curve" in s for s in metrics["skipped"])


def test_missing_columns_of_older_files_are_left_out_and_nan_is_null_in_json(tmp_path):
    old = member(tmp_path, "old")
    (old / "metrics.csv").write_text("epoch,train_loss,val_accuracy\n1,1.5,0.4\n2,1.2,\n3,1.1,"
                                     "0.5\n")
    nan = member(tmp_path, "nan", VAL, val_loss=VAL_LOSS, blank_val_loss=0, seed=1)
    metrics = write_report([old, nan], out=tmp_path / "report", n_boot=20, top=0)
    text = (tmp_path / "report" / "metrics.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    curves = {c["name"]: c for c in metrics["curves"]}
    assert "val_loss" not in curves["old"] and curves["old"]["val_accuracy"] == [0.4, None, 0.5]
    assert curves["old"]["best_epoch"] == 3 and curves["old"]["tail_gain"] == pytest.approx(0.1)
    assert curves["nan"]["val_loss"][0] is None


def test_report_draws_curves_and_a_section_for_runs_with_a_metrics_csv(tmp_path):
    runs = [member(tmp_path, "trained", VAL), member(tmp_path, "ensemble", seed=1)]
    out = tmp_path / "report"
    metrics = write_report(runs, out=out, n_boot=20)
    assert (out / "curves.png").is_file() and "curves.png" in metrics["files"]
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert "## Training curves" in md and "![Training curves](curves.png)" in md
    assert "<h2>Training curves</h2>" in page and '<img alt="Training curves"' in page
    assert "| trained | 20 | 12 | 0.620 | 0.590 | -0.0300 | -0.0200 |" in md
    assert "| ensemble | " not in md.split("## Training curves")[1].split("\n## ")[0]


def test_report_on_runs_without_a_metrics_csv_has_no_curves(tmp_path):
    runs = [member(tmp_path, "mean"), member(tmp_path, "stack", seed=1)]
    out = tmp_path / "report"
    metrics = write_report(runs, out=out, n_boot=20)
    assert metrics["curves"] == []
    assert not (out / "curves.png").exists() and "curves.png" not in metrics["files"]
    for report in ("report.md", "report.html"):
        assert "Training curves" not in (out / report).read_text()


def test_a_rewritten_report_drops_the_curves_of_the_earlier_one(tmp_path):
    trained, ensemble = member(tmp_path, "trained", VAL), member(tmp_path, "ensemble", seed=1)
    out = tmp_path / "report"
    write_report([trained, ensemble], out=out, n_boot=20)
    assert (out / "curves.png").is_file()
    write_report([ensemble], out=out, n_boot=20)
    assert not (out / "curves.png").exists()


def test_the_plot_shows_the_first_runs_of_the_leaderboard_and_says_how_many_are_left_out(
        tmp_path):
    runs = [member(tmp_path, f"m{i:02d}", VAL, seed=i) for i in range(14)]
    metrics = write_report(runs, out=tmp_path / "report", n_boot=20, top=0)
    md = (tmp_path / "report" / "report.md").read_text()
    section = md.split("## Training curves")[1].split("\n## ")[0]
    assert "the plot shows the first 12, the other 2 are in the table only" in section
    board = [row["name"] for row in metrics["leaderboard"]["rows"]]
    table = [line.split(" | ")[0].removeprefix("| ") for line in section.splitlines()
             if line.startswith("| m")]
    assert table == board


BROKEN = {
    "not a table": (b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary", "cannot be read as a CSV table"),
    "empty": (b"", "cannot be read as a CSV table"),
    "ragged": (b"epoch,val_accuracy\n1,0.5\n2,0.6,7,8\n", "cannot be read as a CSV table"),
    "no epoch": (b"step,val_accuracy\n1,0.5\n", "has no epoch column"),
    "no curve column": (b"epoch,lr\n1,0.1\n", "has none of the columns"),
    "header only": (HEADER.encode() + b"\n", "has no epochs"),
    "text value": (b"epoch,val_accuracy\n1,0.5\n2,oops\n", "val_accuracy 'oops' in data row 2"),
    "epochs repeat": (b"epoch,val_accuracy\n1,0.5\n1,0.6\n", "not increasing whole numbers"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_metrics_csv_is_skipped_with_a_note_naming_it(tmp_path, case):
    content, problem = BROKEN[case]
    broken, good = member(tmp_path, "broken"), member(tmp_path, "good", VAL, seed=1)
    (broken / "metrics.csv").write_bytes(content)
    metrics = compute_metrics([load_run(broken), load_run(good)], n_boot=20)
    assert [c["name"] for c in metrics["curves"]] == ["good"]
    notes = [s for s in metrics["skipped"] if "training curve" in s]
    assert len(notes) == 1
    assert notes[0].startswith(f"the training curve of broken: {broken / 'metrics.csv'}: ")
    assert problem in notes[0]


def test_a_report_with_a_broken_metrics_csv_says_what_it_skipped(tmp_path):
    broken = member(tmp_path, "broken")
    (broken / "metrics.csv").write_text("epoch,val_accuracy\n1,0.5\n2,oops\n")
    metrics = write_report([broken], out=tmp_path / "report", n_boot=20)
    assert metrics["curves"] == []
    md = (tmp_path / "report" / "report.md").read_text()
    assert f"Skipped the training curve of broken: {broken / 'metrics.csv'}: " in md
    assert "## Training curves" not in md
