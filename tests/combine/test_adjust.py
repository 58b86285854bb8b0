"""Tests for post-hoc logit adjustment (`ferens adjust`) on synthetic imbalanced runs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli

from ferens.combine.adjust import adjust_run, adjusted_log_probs, choose_tau, class_log_prior
from ferens.combine.ensemble import build_ensemble
from ferens.errors import FerensError
from ferens.io import write_json
from ferens.report.build import write_report
from ferens.runs import Predictions, load_run, save_predictions

COUNTS = np.array([60, 8, 50, 120, 70, 40, 80])  # class 1 is rare, as Disgust is in FER2013


def biased_logits(labels: np.ndarray, seed: int, bias: float = 2.0,
                  margin: float = 3.0) -> np.ndarray:
    """Noisy logits plus ``bias`` times the log prior; at 2 rare classes are under-predicted
    more than the prior justifies (as in networks trained on imbalanced data)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, (len(labels), 7)) + bias * np.log(COUNTS / COUNTS.sum())
    logits[np.arange(len(labels)), labels] += margin
    return logits


def write_run(root, name: str = "member", val_labels: np.ndarray | None = None,
              shuffle_test_labels: bool = False, test_labels: np.ndarray | None = None):
    """A run folder; ``shuffle_test_labels`` keeps the logits but scrambles the saved labels,
    ``test_labels`` keeps the logits but saves these labels (other class counts) instead."""
    val_labels = np.repeat(np.arange(7), COUNTS) if val_labels is None else val_labels
    saved = np.repeat(np.arange(7), COUNTS)
    test_logits = biased_logits(saved, 2)
    if shuffle_test_labels:
        saved = np.random.default_rng(0).permutation(saved)
    test_labels = saved if test_labels is None else test_labels
    path = root / name
    write_json(path / "config.json", {"name": name})
    write_json(path / "summary.json", {"name": name, "kind": "member"})
    save_predictions(path / "predictions" / "val.npz", Predictions(
        biased_logits(val_labels, 1), val_labels, np.arange(len(val_labels))))
    save_predictions(path / "predictions" / "test.npz", Predictions(
        test_logits, test_labels, 10_000 + np.arange(len(test_labels))))
    return path


def recall(preds: Predictions, cls: int) -> float:
    return float((preds.predicted[preds.labels == cls] == cls).mean())


def test_tau_zero_leaves_the_run_unchanged(tmp_path):
    source = load_run(write_run(tmp_path))
    adjusted = adjust_run(source.path, tmp_path / "adj", tau=0.0)
    for split in ("val", "test"):
        assert np.abs(adjusted.splits[split].probs - source.splits[split].probs).max() < 1e-6


def test_adjustment_raises_rare_class_recall_and_macro_f1(tmp_path):
    source = load_run(write_run(tmp_path))
    adjusted = adjust_run(source.path, tmp_path / "adj", select="macro-f1")
    assert adjusted.summary["tau"] > 0
    assert recall(adjusted.test, 1) > recall(source.test, 1) + 0.2
    assert adjusted.summary["test"]["macro_f1"] > adjusted.summary["source_metrics"]["test"][
        "macro_f1"]


def test_tau_is_chosen_on_val_only(tmp_path):
    a = adjust_run(write_run(tmp_path, "a"), tmp_path / "adj-a")
    b = adjust_run(write_run(tmp_path, "b", shuffle_test_labels=True), tmp_path / "adj-b")
    assert a.summary["tau"] > 0
    assert a.summary["tau"] == b.summary["tau"]
    assert np.array_equal(a.test.predicted, b.test.predicted)


def test_the_prior_comes_from_the_val_labels_never_the_test_labels(tmp_path):
    """Test labels with other class counts than val (uniform instead of imbalanced) change
    neither the prior, nor tau, nor a single adjusted test prediction."""
    n = int(COUNTS.sum())
    uniform = np.arange(n) % 7
    a = adjust_run(write_run(tmp_path, "a"), tmp_path / "adj-a")
    b = adjust_run(write_run(tmp_path, "b", test_labels=uniform), tmp_path / "adj-b")
    val_prior = class_log_prior(np.repeat(np.arange(7), COUNTS), 7)
    assert not np.allclose(val_prior, class_log_prior(uniform, 7))
    for run in (a, b):
        assert np.allclose(run.config["log_prior"], val_prior)
        assert run.config["prior_from"] == "val labels"
    assert a.summary["tau"] == b.summary["tau"] > 0
    np.testing.assert_allclose(a.test.log_probs, b.test.log_probs, atol=1e-6)
    source = load_run(tmp_path / "b")
    expected = adjusted_log_probs(source.test.log_probs, val_prior, b.summary["tau"])
    np.testing.assert_allclose(b.test.log_probs, expected, atol=1e-5)


def test_accuracy_budget_takes_the_largest_tau_that_keeps_accuracy_within_budget():
    labels = np.repeat(np.arange(7), COUNTS)
    log_probs = biased_logits(labels, 3, bias=1.0, margin=1.5)  # accuracy falls as tau grows
    prior = class_log_prior(labels, 7)
    chosen = []
    for budget in (0.0, 0.01, 0.05):
        tau, table = choose_tau(log_probs, labels, prior, "accuracy-budget", budget)
        base = table[0]["accuracy"]
        kept = [row for row in table if row["tau"] <= tau]
        assert all(row["accuracy"] >= base - budget - 1e-9 for row in kept)
        after = [row for row in table if row["tau"] > tau]
        assert not after or after[0]["accuracy"] < base - budget
        chosen.append(tau)
    assert chosen == sorted(chosen) and len(set(chosen)) > 1
    assert choose_tau(log_probs, labels, prior, "accuracy-budget", 1.0)[0] == 2.0


def test_adjusted_run_is_accepted_by_ensemble_and_report(tmp_path):
    source = write_run(tmp_path)
    adjusted = adjust_run(source, tmp_path / "adj", select="accuracy-budget")
    ens = build_ensemble([source, adjusted.path], method="mean", out=tmp_path / "ens")
    metrics = write_report([source, adjusted.path, ens.path], out=tmp_path / "report")
    assert [r["name"] for r in metrics["runs"]] == ["member", "adj", "ens"]


def test_bad_requests_are_refused_with_the_reason(tmp_path):
    source = write_run(tmp_path)
    with pytest.raises(FerensError, match="is the source run"):
        adjust_run(source, source)
    with pytest.raises(FerensError, match="unknown tau selection"):
        adjust_run(source, tmp_path / "adj", select="recall")
    with pytest.raises(FerensError, match="expected a finite number from 0 to 100"):
        adjust_run(source, tmp_path / "adj", tau=-1.0)
    with pytest.raises(FerensError, match="not an adjusted run"):
        adjust_run(source, write_run(tmp_path, "other"))
    no_rare = np.repeat([0, 2, 3, 4, 5, 6], 10)
    with pytest.raises(FerensError, match=r"lack class\(es\) \[1\]"):
        adjust_run(write_run(tmp_path, "norare", val_labels=no_rare), tmp_path / "adj2")


def test_cli_adjust_prints_before_and_after(tmp_path, monkeypatch, capsys):
    code, out, _ = run_cli(["adjust", str(write_run(tmp_path)), "--out", str(tmp_path / "adj"),
                            "--select", "accuracy-budget"], monkeypatch, capsys)
    assert code == 0
    assert "accuracy-budget on val" in out and "Disgust" in out
    assert load_run(tmp_path / "adj").config["kind"] == "adjusted"
    code, _, err = run_cli(["adjust", str(tmp_path / "member"), "--out", str(tmp_path / "x"),
                            "--select", "nope"], monkeypatch, capsys)
    assert code == 2 and "unknown tau selection" in err
