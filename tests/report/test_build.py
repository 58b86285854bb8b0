"""`ferens report` on tiny synthetic runs: metrics, bootstrap, FER+ taxonomy, duplicates, HTML."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import K, make_run, synthetic_predictions
from imblearn.metrics import geometric_mean_score
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    classification_report,
    confusion_matrix,
    f1_score,
    log_loss,
)

from ferens.classes import CLASS_NAMES
from ferens.errors import FerensError
from ferens.report.build import compute_metrics, write_report
from ferens.report.duplicates import duplicate_analysis, duplicate_flags, duplicate_groups
from ferens.report.metrics import (
    bootstrap_intervals,
    headline,
    per_class,
    point_scores,
    reliability,
    scores_from_confusion,
)
from ferens.report.taxonomy import (
    FerPlusReference,
    classify_errors,
    compare_runs,
    ferplus_analysis,
)
from ferens.runs import Predictions, load_run

FERPLUS_HEADER = ("Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,"
                  "contempt,unknown,NF")
CHROMIUM = "/usr/bin/chromium"


def write_fer_csv(path: Path, images: np.ndarray, labels: np.ndarray, usage: list[str]) -> Path:
    lines = ["emotion,pixels,Usage"]
    lines += [f"{y},{' '.join(map(str, img.ravel()))},{u}"
              for img, y, u in zip(images, labels, usage, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def planted_dataset(seed: int = 0):
    """30 distinct random faces (20 Training, 10 PrivateTest) with planted exact duplicates.

    Test row 20 copies Training row 3 (same label), row 21 copies Training row 4 with another
    label, rows 22 and 23 are identical with different labels, row 24 copies row 25.
    """
    from ferens.data.fer2013 import FerDataset

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(30, 48, 48), dtype=np.uint8)
    labels = np.arange(30, dtype=np.int64) % K
    images[20], labels[20] = images[3], labels[3]
    images[21], labels[21] = images[4], (labels[4] + 1) % K
    images[23], labels[23] = images[22], (labels[22] + 2) % K
    images[24], labels[24] = images[25], labels[25]
    usage = np.array(["Training"] * 20 + ["PrivateTest"] * 10)
    return FerDataset(images, labels, usage, np.arange(30, dtype=np.int64), Path("synthetic"))


# --- metrics ---------------------------------------------------------------------------------

def test_headline_metrics_agree_with_scikit_learn_and_imblearn():
    preds = synthetic_predictions(400, 0.6, seed=1)
    y, p, probs = preds.labels, preds.predicted, preds.probs
    h = headline(preds, n_boot=50)
    assert h["accuracy"]["value"] == pytest.approx(accuracy_score(y, p))
    assert h["macro_f1"]["value"] == pytest.approx(f1_score(y, p, average="macro"))
    assert h["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y, p))
    assert h["g_mean"]["value"] == pytest.approx(geometric_mean_score(y, p))
    assert h["nll"] == pytest.approx(log_loss(y, probs, labels=list(range(K))))
    one_hot = np.eye(K)[y]
    assert h["brier"] == pytest.approx(((probs - one_hot) ** 2).sum(axis=1).mean())
    assert h["brier"] == pytest.approx(brier_score_loss(y, probs, labels=list(range(K)),
                                                       scale_by_half=False))


@pytest.mark.parametrize("case", ["all classes", "class never predicted", "class never true"])
def test_vectorised_bootstrap_scores_match_library_scores(case):
    preds = synthetic_predictions(300, 0.5, seed=2)
    y, p = preds.labels.copy(), preds.predicted.copy()
    if case == "class never predicted":
        p[p == 1] = 0
    elif case == "class never true":
        y, p = y[y != 1], p[y != 1]
    library = point_scores(y, p, K)
    vectorised = scores_from_confusion(confusion_matrix(y, p, labels=list(range(K))))
    for name, value in library.items():
        assert float(vectorised[name]) == pytest.approx(value), name


def test_per_class_scores_come_from_classification_report():
    preds = synthetic_predictions(300, 0.55, seed=3)
    expected = classification_report(preds.labels, preds.predicted,
                                      target_names=list(CLASS_NAMES), output_dict=True)
    got = per_class(preds)
    for name in CLASS_NAMES:
        assert got[name]["precision"] == pytest.approx(expected[name]["precision"])
        assert got[name]["recall"] == pytest.approx(expected[name]["recall"])
        assert got[name]["f1"] == pytest.approx(expected[name]["f1-score"])
        assert got[name]["support"] == expected[name]["support"]


def test_bootstrap_intervals_contain_the_point_estimate():
    preds = synthetic_predictions(500, 0.6, seed=4)
    h = headline(preds, n_boot=500, seed=0)
    for name in ("accuracy", "macro_f1", "balanced_accuracy", "g_mean"):
        assert h[name]["ci_low"] <= h[name]["value"] <= h[name]["ci_high"], name
        assert h[name]["ci_low"] < h[name]["ci_high"], name


def test_bootstrap_intervals_shrink_with_more_samples():
    small = synthetic_predictions(200, 0.6, seed=5)
    large = synthetic_predictions(5000, 0.6, seed=5)
    ci_small = bootstrap_intervals(small.labels, small.predicted, K, n_boot=400)
    ci_large = bootstrap_intervals(large.labels, large.predicted, K, n_boot=400)
    for name in ci_small:
        width_small = ci_small[name][1] - ci_small[name][0]
        width_large = ci_large[name][1] - ci_large[name][0]
        assert width_large < width_small / 2, name


def test_bootstrap_is_reproducible_for_a_seed_and_changes_with_it():
    preds = synthetic_predictions(300, 0.6, seed=6)
    args = (preds.labels, preds.predicted, K, 200)
    assert bootstrap_intervals(*args, seed=1) == bootstrap_intervals(*args, seed=1)
    assert bootstrap_intervals(*args, seed=1) != bootstrap_intervals(*args, seed=2)


def test_ece_is_gap_between_confidence_and_accuracy():
    labels = np.zeros(10, dtype=np.int64)
    probs = np.full((10, K), 0.1 / (K - 1))
    probs[:, 0] = 0.9
    probs[5:] = np.roll(probs[5:], 1, axis=1)
    curve = reliability(probs, labels)
    assert curve["ece"] == pytest.approx(0.9 - 0.5)
    assert sum(curve["count"]) == 10
    assert len(curve["edges"]) == 16


# --- run comparison --------------------------------------------------------------------------

def test_run_comparison_counts_shared_and_unique_errors_and_runs_mcnemar():
    labels = np.zeros(60, dtype=np.int64)
    right = np.ones(60, dtype=bool)
    a, b = right.copy(), right.copy()
    a[:5] = False
    b[:5] = False
    b[5:35] = False
    a[35:37] = False

    def as_preds(correct: np.ndarray) -> Predictions:
        logits = np.zeros((60, K), dtype=np.float32)
        logits[np.arange(60), np.where(correct, 0, 3)] = 5.0
        return Predictions(logits, labels, np.arange(60))

    comp = compare_runs([as_preds(a), as_preds(b)], ["a", "b"])
    assert comp["all_wrong"] == 5
    assert comp["only_this_run_wrong"] == {"a": 2, "b": 30}
    assert comp["disagreement"][0][1] == pytest.approx(32 / 60)
    test = comp["mcnemar"][0]
    assert (test["a_right_b_wrong"], test["a_wrong_b_right"]) == (30, 2)
    assert test["p_value"] == pytest.approx(binomtest(30, 32, 0.5).pvalue)
    assert test["significant"]


def test_runs_are_aligned_by_row_id_not_position():
    preds = synthetic_predictions(50, 0.6, seed=7)
    order = np.random.default_rng(0).permutation(50)
    shuffled = Predictions(preds.logits[order], preds.labels[order], preds.row_ids[order])
    comp = compare_runs([preds, shuffled], ["a", "b"])
    assert comp["n_common"] == 50
    assert comp["disagreement"][0][1] == 0.0


# --- FER+ taxonomy ---------------------------------------------------------------------------

FERPLUS_CASES = [
    # (FER2013 label, prediction, votes as {column: count}, expected category)
    (0, 3, {"happiness": 8, "anger": 2}, "label_noise"),
    (0, 3, {"anger": 9, "happiness": 1}, "genuine_error"),
    (0, 3, {"anger": 4, "happiness": 4, "neutral": 2}, "ambiguous"),
    (0, 3, {"NF": 10}, "not_a_face_unknown"),
    (0, 3, {"unknown": 6, "anger": 4}, "not_a_face_unknown"),
    (0, 3, {"sadness": 4, "anger": 3, "happiness": 3}, "ambiguous"),
    (0, 3, {"neutral": 8, "anger": 2}, "other"),
    (0, 3, {"contempt": 7, "anger": 3}, "other"),
    (3, 3, {"happiness": 10}, "correct"),
]


def ferplus_votes_file(path: Path) -> Path:
    columns = FERPLUS_HEADER.split(",")[2:]
    lines = [FERPLUS_HEADER]
    for i, (_, _, votes, _) in enumerate(FERPLUS_CASES):
        counts = ",".join(str(votes.get(c, 0)) for c in columns)
        lines.append(f"PrivateTest,fer{i:07d}.png,{counts}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ferplus_taxonomy_classifies_hand_made_cases(tmp_path):
    from ferens.data.fer2013 import read_ferplus_votes

    votes = read_ferplus_votes(ferplus_votes_file(tmp_path / "fer2013new.csv"))
    ref = FerPlusReference.from_votes(votes)
    labels = np.array([c[0] for c in FERPLUS_CASES])
    predicted = np.array([c[1] for c in FERPLUS_CASES])
    got = classify_errors(labels, predicted, ref)
    assert got.tolist() == [c[3] for c in FERPLUS_CASES]

    logits = np.zeros((len(labels), K), dtype=np.float32)
    logits[np.arange(len(labels)), predicted] = 5.0
    analysis = ferplus_analysis(Predictions(logits, labels, np.arange(len(labels))), ref)
    assert analysis["errors"] == 8
    assert analysis["per_class"]["Angry"] == {"label_noise": 1, "genuine_error": 1,
                                              "ambiguous": 2, "not_a_face_unknown": 2,
                                              "other": 2}
    # emotion majorities: happiness, anger, sadness, neutral, happiness; prediction Happy
    assert analysis["rescored"]["n"] == 5
    assert analysis["rescored"]["accuracy_vs_ferplus"] == pytest.approx(2 / 5)


def test_ferplus_rows_outside_the_votes_file_are_an_error(tmp_path):
    from ferens.data.fer2013 import read_ferplus_votes

    ref = FerPlusReference.from_votes(
        read_ferplus_votes(ferplus_votes_file(tmp_path / "fer2013new.csv")))
    preds = synthetic_predictions(20, 0.5, seed=8, first_row=100)
    with pytest.raises(FerensError, match="FER\\+ votes cover rows"):
        ferplus_analysis(preds, ref)


# --- duplicates ------------------------------------------------------------------------------

def test_duplicate_detection_finds_planted_leaks_and_conflicts():
    ds = planted_dataset()
    group = duplicate_groups(ds.images)
    assert len(np.unique(group)) == 30 - 4
    flags = duplicate_flags(group, ds.labels, ds.usage)
    test_rows = np.arange(20, 30)
    assert np.flatnonzero(flags["leaked"]).tolist() == [20, 21]
    assert np.flatnonzero(flags["leaked_same_label"]).tolist() == [20]
    assert np.flatnonzero(flags["conflicting"]).tolist() == [4, 21, 22, 23]
    assert np.flatnonzero(flags["duplicated"][test_rows]).tolist() == [0, 1, 2, 3, 4, 5]
    assert flags["rest"][test_rows].sum() == 4


def test_duplicate_analysis_scores_runs_on_duplicates_and_the_rest():
    ds = planted_dataset()
    test = np.arange(20, 30)
    predicted = ds.labels[test].copy()
    predicted[[0, 1, 2, 3]] = (predicted[[0, 1, 2, 3]] + 1) % K
    logits = np.zeros((10, K), dtype=np.float32)
    logits[np.arange(10), predicted] = 5.0
    preds = Predictions(logits, ds.labels[test], test)
    result = duplicate_analysis(ds, [preds], ["run"])
    assert result["counts"] == {"leaked": 2, "leaked_same_label": 1, "conflicting": 3,
                                "duplicated": 6, "rest": 4}
    assert result["accuracy"]["run"]["leaked"] == 0.0
    assert result["accuracy"]["run"]["rest"] == 1.0
    assert result["accuracy"]["run"]["duplicated"] == pytest.approx(2 / 6)
    assert result["n_conflicting_groups"] == 2
    assert [g["row_ids"] for g in result["conflicting_groups"]] in ([[4, 21], [22, 23]],
                                                                    [[22, 23], [4, 21]])


# --- the written report ----------------------------------------------------------------------

XSS_NAME = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def report_without_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("nodata")
    runs = [make_run(root, "a", synthetic_predictions(300, 0.6, seed=10), name=XSS_NAME),
            make_run(root, "b", synthetic_predictions(300, 0.7, seed=11))]
    out = root / "report"
    return out, write_report(runs, out=out, seed=3)


def test_report_writes_html_markdown_json_and_pngs(report_without_data):
    out, metrics = report_without_data
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "per_class_recall.png").is_file() and (out / "reliability.png").is_file()
    assert len(list(out.glob("*_confusion.png"))) == 2
    assert [r["name"] for r in metrics["runs"]] == [XSS_NAME, "b"]
    assert metrics["comparison"]["n_common"] == 300
    assert metrics["seed"] == 3


def test_rewriting_a_report_removes_the_per_run_plots_of_the_earlier_one(tmp_path):
    runs = [make_run(tmp_path, name, synthetic_predictions(100, 0.6, seed=i))
            for i, name in enumerate(("a", "b", "c"))]
    out = tmp_path / "report"
    write_report(runs, out=out)
    write_report(runs[1:], out=out)
    assert sorted(p.name for p in out.glob("*_confusion.png")) == ["01_b_confusion.png",
                                                                   "02_c_confusion.png"]
    (out / "01_notes.png").write_bytes(b"not ours")  # a file the report did not write
    with pytest.raises(FerensError, match="refusing to replace it"):
        write_report(runs, out=out)
    assert (out / "01_notes.png").read_bytes() == b"not ours"


def test_html_is_one_file_with_no_external_references(report_without_data):
    out, _ = report_without_data
    assert len(list(out.glob("*.html"))) == 1
    page = (out / "report.html").read_text()
    for forbidden in ('src="http', "src='http", "<link", "<script", "href=", "url(", "@import"):
        assert forbidden not in page, forbidden
    sources = re.findall(r'<img[^>]*src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)


def test_html_and_markdown_escape_embedded_text(report_without_data):
    out, _ = report_without_data
    page = (out / "report.html").read_text()
    assert XSS_NAME not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert XSS_NAME not in (out / "report.md").read_text()


def test_report_without_data_says_it_skipped_thumbnails(report_without_data):
    out, metrics = report_without_data
    assert any("thumbnails" in s for s in metrics["skipped"])
    assert any("FER+" in s for s in metrics["skipped"])
    assert metrics["duplicates"] is None
    for text in ((out / "report.html").read_text(), (out / "report.md").read_text()):
        assert "Skipped thumbnails" in text
        assert "exact-duplicate analysis" in text
    assert not list(out.glob("*_errors.png"))


def test_metrics_json_is_strict_json(report_without_data):
    out, _ = report_without_data

    def reject(constant):
        raise ValueError(constant)

    json.loads((out / "metrics.json").read_text(), parse_constant=reject)


def test_report_with_data_and_ferplus_adds_thumbnails_duplicates_and_taxonomy(
        tmp_path, monkeypatch):
    monkeypatch.setenv("FERENS_CACHE", str(tmp_path / "cache"))
    ds = planted_dataset()
    data = write_fer_csv(tmp_path / "fer2013.csv", ds.images, ds.labels, ds.usage.tolist())
    votes = tmp_path / "fer2013new.csv"
    columns = FERPLUS_HEADER.split(",")[2:]
    votes.write_text(FERPLUS_HEADER + "\n" + "".join(
        f"{u},fer{i:07d}.png," + ",".join("10" if c == "happiness" else "0" for c in columns)
        + "\n" for i, u in enumerate(ds.usage)))
    test = np.arange(20, 30)
    logits = np.random.default_rng(0).normal(size=(10, K)).astype(np.float32)
    run = make_run(tmp_path, "member", Predictions(logits, ds.labels[test], test))
    metrics = write_report([run], out=tmp_path / "out", data=data, ferplus=votes)
    out = tmp_path / "out"
    assert metrics["skipped"] == []
    assert metrics["duplicates"]["counts"]["leaked"] == 2
    assert metrics["runs"][0]["ferplus"]["rescored"]["n"] == 10
    assert list(out.glob("*_confident_errors.png")) and list(out.glob("*_confused_pairs.png"))
    page = (out / "report.html").read_text()
    assert "Exact duplicates" in page and "FER+ noise taxonomy" in page
    assert "Skipped" not in page


def test_ferplus_votes_are_joined_only_to_rows_of_the_same_split(tmp_path):
    # test predictions whose row ids are FER+ Training rows (an image folder's file positions)
    votes = tmp_path / "fer2013new.csv"
    columns = FERPLUS_HEADER.split(",")[2:]
    usage = ["Training"] * 30 + ["PrivateTest"] * 30
    votes.write_text(FERPLUS_HEADER + "\n" + "".join(
        f"{u},fer{i:07d}.png," + ",".join("10" if c == "happiness" else "0" for c in columns)
        + "\n" for i, u in enumerate(usage)))
    wrong = make_run(tmp_path, "wrong", synthetic_predictions(30, 0.5, seed=16))
    with pytest.raises(FerensError, match=r"row 0 is 'Training' in FER\+ but the test split"):
        write_report([wrong], out=tmp_path / "out", ferplus=votes)
    assert not (tmp_path / "out").exists()
    frame = pd.read_csv(votes)
    with pytest.raises(FerensError, match="is 'Training' in FER"):
        compute_metrics([load_run(wrong)], ferplus=frame, n_boot=20)
    right = make_run(tmp_path, "right", synthetic_predictions(30, 0.5, seed=16, first_row=30))
    metrics = write_report([right], out=tmp_path / "out", ferplus=votes)
    assert metrics["runs"][0]["ferplus"]["rescored"]["n"] == 30


def test_data_that_does_not_line_up_is_skipped_with_a_reason(tmp_path, monkeypatch):
    ds = planted_dataset()
    ds.labels = (ds.labels + 1) % K
    monkeypatch.setattr("ferens.data.fer2013.load_fer2013", lambda path: ds)
    test = np.arange(20, 30)
    logits = np.zeros((10, K), dtype=np.float32)
    run = make_run(tmp_path, "member", Predictions(logits, (ds.labels[test] + 6) % K, test))
    metrics = write_report([run], out=tmp_path / "out", data=tmp_path / "anything.csv")
    assert metrics["duplicates"] is None
    assert any("does not line up" in s for s in metrics["skipped"])


def test_unknown_split_and_empty_run_list_are_user_errors(tmp_path):
    run = make_run(tmp_path, "a", synthetic_predictions(30, 0.5, seed=12))
    with pytest.raises(FerensError, match="unknown split"):
        compute_metrics([load_run(run)], split="train")
    with pytest.raises(FerensError, match="no run folders"):
        write_report([], out=tmp_path / "out")


def test_cli_report_prints_headline_and_where_the_report_went(tmp_path):
    from typer.testing import CliRunner

    from ferens.cli import app

    run = make_run(tmp_path, "a", synthetic_predictions(60, 0.5, seed=13))
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output and "skipped thumbnails" in result.output
    assert (tmp_path / "rep" / "report.html").is_file()


def test_runs_with_different_labels_are_compared_on_rows_that_agree(tmp_path):
    first = synthetic_predictions(40, 0.5, seed=15)
    relabelled = Predictions(first.logits, first.labels.copy(), first.row_ids)
    relabelled.labels[:10] = (relabelled.labels[:10] + 1) % K
    runs = [load_run(make_run(tmp_path, name, p))
            for name, p in (("a", first), ("b", relabelled))]
    metrics = compute_metrics(runs, n_boot=20)
    assert metrics["comparison"]["n_common"] == 30
    assert any("30 rows" in note for note in metrics["notes"])


def test_ferplus_frame_is_accepted_by_compute_metrics(tmp_path):
    votes = pd.DataFrame(0, index=range(30), columns=FERPLUS_HEADER.split(",")[2:])
    votes["happiness"] = 10
    run = load_run(make_run(tmp_path, "a", synthetic_predictions(30, 0.5, seed=14)))
    metrics = compute_metrics([run], ferplus=votes, n_boot=20)
    assert metrics["runs"][0]["ferplus"]["rescored"]["n"] == 30


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")
def test_report_renders_in_headless_chromium(report_without_data, tmp_path):
    out, _ = report_without_data
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1200,2000", (out / "report.html").resolve().as_uri()],
        check=True, capture_output=True, timeout=120)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels[..., :3].std() > 0.05
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def test_per_class_recall_interval_is_wilson_and_contains_the_recall():
    from ferens.report.metrics import recall_interval

    low, high = recall_interval(23, 55)
    assert low < 23 / 55 < high
    p, n, z = 23 / 55, 55, 1.959964
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-5)
    assert recall_interval(0, 0) == [None, None]
