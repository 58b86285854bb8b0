"""Tests for `ferens ensemble` on tiny synthetic member folders."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    TEST_IDS,
    TEST_LABELS,
    VAL_IDS,
    VAL_LABELS,
    complementary_members,
    expert_logits,
    write_member,
)
from scipy.special import log_softmax

from ferens import cli
from ferens.combine import ensemble
from ferens.combine.ensemble import (
    METHODS,
    apply_combination,
    build_ensemble,
    combine,
    fit_temperature,
    fitted_parameters,
)
from ferens.errors import FerensError
from ferens.io import read_json, write_json
from ferens.runs import Predictions, load_predictions, load_run, save_predictions


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """Run `ferens` through main() and return its exit code."""
    monkeypatch.setattr(sys, "argv", ["ferens", *args])
    try:
        cli.main()
    except SystemExit as exc:
        return int(exc.code)
    return 0


@pytest.mark.parametrize("method", METHODS)
def test_each_method_beats_best_member_on_complementary_members(tmp_path, method):
    run = build_ensemble(complementary_members(tmp_path), method=method, out=tmp_path / "ens")
    s = run.summary
    assert s["test"]["accuracy"] > s["best_member"]["test_accuracy"] + 0.15
    assert s["val"]["accuracy"] > max(m["val"]["accuracy"] for m in s["member_metrics"].values())


@pytest.mark.parametrize("method", ["stack", "weighted", "greedy"])
def test_fitted_methods_never_use_test_labels(tmp_path, method):
    runs = [load_run(p) for p in complementary_members(tmp_path)]
    shuffled = np.random.default_rng(7).permutation(TEST_LABELS)
    mixed = [replace(r, splits={**r.splits, "test": replace(r.test, labels=shuffled)})
             for r in runs]
    plain_test, mixed_test = combine(runs, method).test, combine(mixed, method).test
    np.testing.assert_array_equal(plain_test.logits, mixed_test.logits)
    np.testing.assert_array_equal(mixed_test.labels, shuffled)


def _shift_ids(root: Path) -> list[Path]:
    other = expert_logits(VAL_LABELS, {0}, 9)
    return [write_member(root, "a", other, other),
            write_member(root, "b", other, other, test_ids=TEST_IDS + 1)]


def _flip_label(root: Path) -> list[Path]:
    other = expert_logits(VAL_LABELS, {0}, 9)
    labels = VAL_LABELS.copy()
    labels[5] = 6
    return [write_member(root, "a", other, other), write_member(root, "b", other, other, labels)]


def _nan_logits(root: Path) -> list[Path]:
    other = expert_logits(VAL_LABELS, {0}, 9)
    bad = other.copy()
    bad[3, 2] = np.nan
    return [write_member(root, "a", other, other), write_member(root, "b", bad, other)]


def _missing_file(root: Path) -> list[Path]:
    other = expert_logits(VAL_LABELS, {0}, 9)
    paths = [write_member(root, "a", other, other), write_member(root, "b", other, other)]
    (paths[1] / "predictions" / "test.npz").unlink()
    return paths


@pytest.mark.parametrize("make, message", [
    (_shift_ids, "member b"),
    (_flip_label, "labels differ"),
    (_nan_logits, "NaN/inf"),
    (_missing_file, "test.npz"),
])
def test_bad_members_exit_with_code_2_naming_the_problem(tmp_path, monkeypatch, capsys, make,
                                                          message):
    paths = make(tmp_path)
    code = run_cli(monkeypatch, "ensemble", *map(str, paths), "--out", str(tmp_path / "ens"))
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ens").exists()


def test_single_member_unknown_method_and_out_equal_to_member_are_rejected(
        tmp_path, monkeypatch, capsys):
    a, b = complementary_members(tmp_path)[:2]
    assert run_cli(monkeypatch, "ensemble", str(a), "--out", str(tmp_path / "e")) == 2
    assert "at least 2 members" in capsys.readouterr().err
    assert run_cli(monkeypatch, "ensemble", str(a), str(b), "--method", "median",
                   "--out", str(tmp_path / "e")) == 2
    assert "unknown ensemble method" in capsys.readouterr().err
    assert run_cli(monkeypatch, "ensemble", str(a), str(b), "--out", str(b)) == 2
    assert "output folder" in capsys.readouterr().err


def test_cli_writes_ensemble_and_prints_table(tmp_path, monkeypatch, capsys):
    paths = complementary_members(tmp_path)
    code = run_cli(monkeypatch, "ensemble", *map(str, paths), "--method", "weighted",
                   "--out", str(tmp_path / "ens"))
    assert code == 0
    out = capsys.readouterr().out
    assert "ensemble" in out and "best member" in out
    assert load_run(tmp_path / "ens").summary["method"] == "weighted"


def test_rows_in_another_order_are_aligned_by_row_id(tmp_path):
    paths = complementary_members(tmp_path / "ordered")
    order = np.random.default_rng(3).permutation(len(VAL_LABELS))
    b = load_run(paths[1])
    shuffled_b = write_member(tmp_path / "shuffled", "b", b.val.logits[order], b.test.logits,
                              val_labels=VAL_LABELS[order], val_ids=VAL_IDS[order])
    plain = build_ensemble(paths, out=tmp_path / "e1")
    mixed = build_ensemble([paths[0], shuffled_b, paths[2]], out=tmp_path / "e2")
    np.testing.assert_array_equal(plain.val.logits, mixed.val.logits)
    np.testing.assert_array_equal(mixed.val.row_ids, VAL_IDS)


def test_mean_of_identical_one_hot_members_equals_each_member(tmp_path):
    one_hot = 12.0 * np.eye(7)[(VAL_LABELS + np.arange(len(VAL_LABELS))) % 7]
    paths = [write_member(tmp_path, n, one_hot, one_hot) for n in ("a", "b", "c")]
    run = build_ensemble(paths, method="mean", out=tmp_path / "ens")
    member = load_run(paths[0])
    for split in ("val", "test"):
        np.testing.assert_allclose(run.splits[split].probs, member.splits[split].probs, atol=1e-6)
        np.testing.assert_array_equal(run.splits[split].predicted, member.splits[split].predicted)


def test_ensemble_folder_is_accepted_as_member(tmp_path):
    a, b, c = complementary_members(tmp_path)
    inner = build_ensemble([a, b], method="weighted", out=tmp_path / "inner")
    outer = build_ensemble([inner.path, c], method="greedy", out=tmp_path / "outer")
    assert outer.summary["members"] == ["inner", "c"]
    assert read_json(outer.path / "config.json")["kind"] == "ensemble"
    assert outer.summary["test"]["accuracy"] > inner.summary["test"]["accuracy"]


def test_temperature_scaling_lowers_val_nll_of_overconfident_member(tmp_path):
    a, b, c = complementary_members(tmp_path)
    loud = load_run(a)
    loud_path = write_member(tmp_path, "loud", 8 * loud.val.logits, 8 * loud.test.logits)
    run = build_ensemble([loud_path, b, c], method="mean", temperature=True, out=tmp_path / "e")
    temps = run.summary["temperatures"]["loud"]
    assert temps["T"] > 2
    assert temps["val_nll_after"] < temps["val_nll_before"]
    t = fit_temperature(8 * loud.val.logits, VAL_LABELS)
    assert t == pytest.approx(temps["T"], rel=1e-3)


def test_confidently_wrong_member_gets_no_weight_and_no_greedy_picks(tmp_path):
    a, b, c = complementary_members(tmp_path)
    wrong = 10 * np.eye(7)[(VAL_LABELS + 1) % 7]
    bad = write_member(tmp_path, "wrong", wrong, 10 * np.eye(7)[(TEST_LABELS + 1) % 7])
    runs = [load_run(p) for p in (a, b, c, bad)]
    weights = combine(runs, "weighted").details["weights"]
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["wrong"] < 1e-3
    assert combine(runs, "greedy").details["counts"]["wrong"] == 0


def test_summary_reports_members_leave_one_out_and_disagreement(tmp_path):
    run = build_ensemble(complementary_members(tmp_path), method="stack", out=tmp_path / "ens")
    s = run.summary
    assert s["kind"] == "ensemble" and s["members"] == ["a", "b", "c"]
    assert set(s["leave_one_out"]) == {"a", "b", "c"}
    assert all(v["test_accuracy"] < s["test"]["accuracy"] for v in s["leave_one_out"].values())
    assert [d["pair"] for d in s["disagreement"]] == [["a", "b"], ["a", "c"], ["b", "c"]]
    assert all(0 < d["test"] <= 1 for d in s["disagreement"])
    assert s["details"]["C"] in s["details"]["C_grid"]
    assert s["seconds"] >= 0
    np.testing.assert_array_equal(run.test.row_ids, TEST_IDS)


@pytest.mark.parametrize("method", METHODS)
def test_saved_parameters_reproduce_test_predictions_from_member_test_logits_alone(tmp_path,
                                                                                  method):
    paths = complementary_members(tmp_path)
    run = build_ensemble(paths, method=method, out=tmp_path / "ens", temperature=True)
    saved = read_json(run.path / "summary.json")
    temps = [saved["temperatures"][n]["T"] for n in saved["members"]]
    log_probs = [log_softmax(load_run(p).test.logits.astype(np.float64) / t, axis=1)
                 for p, t in zip(paths, temps, strict=True)]
    params = fitted_parameters(method, saved["details"], saved["members"])
    out = apply_combination(method, params, log_probs)
    np.testing.assert_allclose(np.exp(out), run.test.probs, atol=1e-6)


def test_stack_details_keep_the_full_precision_stacker(tmp_path):
    run = build_ensemble(complementary_members(tmp_path), method="stack", out=tmp_path / "ens")
    stacker = read_json(run.path / "summary.json")["details"]["stacker"]
    assert set(stacker) == {"C", "classes", "feature_floor", "mean", "scale", "coef",
                            "intercept"}
    assert np.shape(stacker["coef"]) == (7, 21) and np.shape(stacker["mean"]) == (21,)
    assert stacker["classes"] == list(range(7))
    with pytest.raises(FerensError, match="rebuild the ensemble"):
        fitted_parameters("stack", {"C": 1.0}, ["a", "b", "c"])


@pytest.mark.slow
def test_ensemble_module_itself_imports_no_torch():
    package_dir = str(Path(ensemble.__file__).parents[1])
    code = ("import sys, types; pkg = types.ModuleType('ferens'); "
            f"pkg.__path__ = [{package_dir!r}]; sys.modules['ferens'] = pkg; "
            "import ferens.combine.ensemble; sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("temperature", [False, True])
def test_the_fitted_ensemble_is_applied_to_the_members_training_predictions(tmp_path, method,
                                                                             temperature):
    members = complementary_members(tmp_path / "m")
    for d in members:  # Training predictions identical to test ones, under other row ids
        test = load_predictions(d / "predictions" / "test.npz")
        save_predictions(d / "predictions" / "train.npz",
                         Predictions(test.logits, test.labels, test.row_ids + 50_000))
    out = tmp_path / "ens"
    build_ensemble(members, method=method, out=out, temperature=temperature)
    train = load_predictions(out / "predictions" / "train.npz")
    test = load_predictions(out / "predictions" / "test.npz")
    assert np.array_equal(train.row_ids, test.row_ids + 50_000)
    assert np.allclose(train.log_probs, test.log_probs, atol=1e-5)
    (members[1] / "predictions" / "train.npz").unlink()
    build_ensemble(members, method=method, out=tmp_path / "ens2", temperature=temperature)
    assert not (tmp_path / "ens2" / "predictions" / "train.npz").exists()


def test_the_same_member_given_twice_is_refused(tmp_path, monkeypatch, capsys):
    a, b, _ = complementary_members(tmp_path)
    for runs in ([a, a, b], [a, b, a.parent / ".." / a.parent.name / a.name]):
        with pytest.raises(FerensError, match=r"given twice"):
            build_ensemble(runs, method="mean", out=tmp_path / "ens")
    assert run_cli(monkeypatch, "ensemble", str(a), str(a), "--out", str(tmp_path / "e")) == 2
    assert "given twice" in capsys.readouterr().err
    assert not (tmp_path / "ens").exists() and not (tmp_path / "e").exists()


def test_ferplus_label_members_stay_out_of_fer2013_label_ensembles(tmp_path):
    a, b, c = complementary_members(tmp_path)
    for run in (b, c):  # trained with --labels ferplus: val and test relabelled by FER+
        write_json(run / "config.json", {"name": run.name, "kind": "member",
                                         "labels": "ferplus"})
    with pytest.raises(FerensError, match=r"a \(fer2013\), b \(ferplus\)"):
        build_ensemble([a, b], method="mean", out=tmp_path / "ens")
    ferplus = build_ensemble([b, c], method="mean", out=tmp_path / "fp")
    assert ferplus.config["labels"] == "ferplus"
    with pytest.raises(FerensError, match=r"\(ferplus\)"):  # nor through an ensemble of them
        build_ensemble([a, tmp_path / "fp"], method="mean", out=tmp_path / "mixed")
    from ferens.combine.adjust import adjust_run

    adjusted = adjust_run(tmp_path / "fp", tmp_path / "fp-adjusted", tau=0.5)
    assert adjusted.config["labels"] == "ferplus"
    with pytest.raises(FerensError, match=r"\(ferplus\)"):
        build_ensemble([a, tmp_path / "fp-adjusted"], method="mean", out=tmp_path / "mixed")


def _noise_members(root: Path, count: int = 4) -> list[Path]:
    """Members whose log-probabilities carry no information about the labels."""
    rng = np.random.default_rng(3)
    return [write_member(root, f"n{i}", rng.normal(0, 2, (len(VAL_LABELS), 7)),
                         rng.normal(0, 2, (len(TEST_LABELS), 7))) for i in range(count)]


def test_stack_val_predictions_are_out_of_fold(tmp_path):
    # A stacker fitted on all of val memorises noise; its saved val predictions must come
    # from stackers that never saw the row, so on noise members they stay near chance.
    run = build_ensemble(_noise_members(tmp_path), method="stack", out=tmp_path / "ens")
    details = run.summary["details"]
    assert details["val_predictions"] == "out-of-fold" and details["cv_folds"] == 5
    assert run.summary["val"]["accuracy"] < 0.25
    members = [load_run(tmp_path / f"n{i}") for i in range(4)]
    in_sample = ensemble.apply_stacker(details["stacker"], [m.val.log_probs for m in members])
    assert ensemble.accuracy(in_sample, VAL_LABELS) > run.summary["val"]["accuracy"] + 0.15


def test_stack_chooses_c_by_cross_validated_nll(tmp_path):
    noise = build_ensemble(_noise_members(tmp_path / "noise"), method="stack",
                           out=tmp_path / "noise-ens").summary["details"]
    useful = build_ensemble(complementary_members(tmp_path / "useful"), method="stack",
                            out=tmp_path / "useful-ens").summary["details"]
    for details in (noise, useful):
        assert set(details["cv_nll"]) == {str(c) for c in ensemble.STACK_C_GRID}
        assert details["C"] == float(min(details["cv_nll"], key=details["cv_nll"].get))
        assert details["stacker"]["C"] == details["C"]  # the stacker applied to test
    assert noise["C"] <= 0.01  # noise: strong regularisation wins
    assert useful["C"] >= 1.0  # informative members: a weakly regularised stacker wins


def test_rebuilding_an_unchanged_ensemble_rewrites_identical_files(tmp_path, monkeypatch):
    clock = itertools.count()  # perf_counter gives 0, 1, 4, 9, ...: every span is new
    monkeypatch.setattr(ensemble.time, "perf_counter", lambda: float(next(clock)) ** 2)
    a, b, c = complementary_members(tmp_path)
    out = tmp_path / "ens"
    build_ensemble([a, b], method="weighted", out=out)
    first = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    build_ensemble([a, b], method="weighted", out=out)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == first
    # new members: new content and a new wall time
    build_ensemble([a, b, c], method="weighted", out=out)
    assert read_json(out / "summary.json")["seconds"] != json.loads(first["summary.json"])[
        "seconds"]


@pytest.mark.parametrize("metric", ["accuracy", "nll"])
@pytest.mark.parametrize("rounds", [3, 5])
def test_greedy_selection_returns_the_best_prefix_not_every_round(metric, rounds):
    """Two mirror-image experts: their 50/50 mean is best on val, and every later round (forced
    to add one of them again) tilts the mix and scores worse, so the picks stop at two."""
    from ferens.combine.ensemble import greedy_selection

    labels = np.tile(np.arange(7), 20)
    first_half = np.arange(len(labels)) < len(labels) // 2

    def expert(good: np.ndarray) -> np.ndarray:
        z = np.zeros((len(labels), 7))
        z[np.arange(len(labels)), labels] = np.where(good, 4.0, 0.5)
        z[np.arange(len(labels)), (labels + 1) % 7] += np.where(good, 0.0, 1.0)
        return log_softmax(z, axis=1)

    members = [expert(first_half), expert(~first_half)]
    picks = greedy_selection(members, labels, metric, rounds=rounds)
    assert sorted(picks) == [0, 1]

    def val_nll(chosen: list[int]) -> float:
        probs = np.mean([np.exp(members[i]) for i in chosen], axis=0)
        return float(-np.log(probs[np.arange(len(labels)), labels]).mean())

    assert all(val_nll(picks) < val_nll([*picks, extra]) for extra in (0, 1))
