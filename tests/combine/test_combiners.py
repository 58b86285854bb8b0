"""The combiners as objects: fit on val, apply with predict_log_proba, round-trip through
to_dict/from_dict, never see test labels; and fitted.json, which holds what they fitted."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from helpers import TEST_LABELS, complementary_members

from ferens.combine.adjust import LogitAdjuster, adjust_run
from ferens.combine.combiners import METHODS, check_log_probs
from ferens.combine.ensemble import build_ensemble, combine
from ferens.combine.fitted import (
    FITTED_FILE,
    FittedEnsemble,
    combiner_from_dict,
    load_fitted,
    make_combiner,
)
from ferens.combine.temperature import TemperatureScaler
from ferens.errors import FerensError
from ferens.io import read_json, write_json
from ferens.runs import load_run


def _splits(tmp_path):
    runs = [load_run(p) for p in complementary_members(tmp_path)]
    val = [r.val.log_probs for r in runs]
    test = [r.test.log_probs for r in runs]
    return runs, val, runs[0].val.labels, test


@pytest.mark.parametrize("method", METHODS)
def test_fit_then_to_dict_from_dict_gives_identical_predictions(tmp_path, method):
    _, val, y, test = _splits(tmp_path)
    fitted = make_combiner(method).fit(val, y)
    saved = json.loads(json.dumps(fitted.to_dict()))  # through JSON, as fitted.json is
    loaded = combiner_from_dict(saved)
    np.testing.assert_array_equal(loaded.predict_log_proba(test), fitted.predict_log_proba(test))
    assert loaded.to_dict() == saved
    assert fitted.n_members_ == 3 and fitted.n_classes_ == 7


def test_fitted_state_lives_in_trailing_underscore_attributes(tmp_path):
    _, val, y, _ = _splits(tmp_path)
    assert np.isclose(make_combiner("weighted").fit(val, y).weights_.sum(), 1.0)
    greedy = make_combiner("greedy").fit(val, y)
    assert greedy.weights_.sum() == len(greedy.picks_) > 0
    stack = make_combiner("stack").fit(val, y)
    assert stack.coef_.shape == (7, 21) and stack.intercept_.shape == (7,)
    assert stack.C_ in stack.C_grid and set(stack.cv_nll_) == {str(c) for c in stack.C_grid}


def test_temperature_scaler_and_logit_adjuster_round_trip(tmp_path):
    runs, _, y, _ = _splits(tmp_path)
    logits = [r.val.logits * 3 for r in runs]
    scaler = TemperatureScaler().fit(logits, y)
    again = TemperatureScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    for a, b in zip(scaler.transform(logits), again.transform(logits), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (scaler.temperatures_ > 1).all()  # overconfident members are cooled
    adjuster = LogitAdjuster(select="macro-f1").fit(runs[0].val.log_probs, y)
    loaded = LogitAdjuster.from_dict(json.loads(json.dumps(adjuster.to_dict())))
    np.testing.assert_array_equal(loaded.predict_log_proba(runs[0].test.log_probs),
                                  adjuster.predict_log_proba(runs[0].test.log_probs))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("temperature", [False, True])
def test_garbage_test_labels_leave_every_test_prediction_unchanged(tmp_path, method, temperature):
    runs = [load_run(p) for p in complementary_members(tmp_path)]
    garbage = np.full_like(TEST_LABELS, 6)  # one class for every row: nothing to learn from
    spoiled = [replace(r, splits={**r.splits, "test": replace(r.test, labels=garbage)})
               for r in runs]
    plain = combine(runs, method, temperature=temperature)
    other = combine(spoiled, method, temperature=temperature)
    np.testing.assert_array_equal(plain.test.logits, other.test.logits)
    assert json.dumps(plain.fitted.to_dict()) == json.dumps(other.fitted.to_dict())


def test_bad_inputs_are_refused_up_front(tmp_path):
    _, val, y, test = _splits(tmp_path)
    with pytest.raises(FerensError, match="not fitted"):
        make_combiner("weighted").predict_log_proba(test)
    fitted = make_combiner("weighted").fit(val, y)
    with pytest.raises(FerensError, match="fitted on 3 members, given 2"):
        fitted.predict_log_proba(test[:2])
    with pytest.raises(FerensError, match="fitted on 7 classes"):
        fitted.predict_log_proba([t[:, :5] for t in test])
    with pytest.raises(FerensError, match="NaN"):
        make_combiner("mean").fit([val[0], val[1] * np.nan], y)
    with pytest.raises(FerensError, match="expected 210 labels"):
        make_combiner("stack").fit(val, y[:-1])
    with pytest.raises(FerensError, match="class indices"):
        make_combiner("greedy").fit(val, y + 7)
    with pytest.raises(FerensError, match="unknown ensemble method"):
        make_combiner("median")
    assert len(check_log_probs(np.stack(val))) == 3  # one (M, N, K) array works too


@pytest.mark.parametrize("method", METHODS)
def test_an_ensemble_writes_fitted_json_and_it_reproduces_the_saved_test_predictions(
        tmp_path, method):
    paths = complementary_members(tmp_path)
    run = build_ensemble(paths, method=method, out=tmp_path / "ens", temperature=True)
    assert run.config["fitted"] == FITTED_FILE
    saved = read_json(run.path / FITTED_FILE)
    assert saved["members"] == ["a", "b", "c"] and saved["combiner"]["method"] == method
    # the summary's copy is for reports only: spoil it and fitted.json still gives the run
    summary = read_json(run.path / "summary.json")
    summary["details"], summary["temperatures"] = {}, None
    write_json(run.path / "summary.json", summary)
    fitted = load_fitted(run.path)
    out = fitted.predict_log_proba([load_run(p).test.logits for p in paths])
    np.testing.assert_allclose(np.exp(out), run.test.probs, atol=1e-6)


def test_a_run_older_than_fitted_json_is_read_from_its_summary(tmp_path):
    paths = complementary_members(tmp_path)
    run = build_ensemble(paths, method="stack", out=tmp_path / "ens", temperature=True)
    (run.path / FITTED_FILE).unlink()
    config = read_json(run.path / "config.json")
    del config["fitted"]  # as ferens wrote ensembles before fitted.json (results/)
    write_json(run.path / "config.json", config)
    fitted = load_fitted(run.path)
    assert isinstance(fitted, FittedEnsemble) and fitted.temperature is not None
    out = fitted.predict_log_proba([load_run(p).test.logits for p in paths])
    np.testing.assert_allclose(np.exp(out), run.test.probs, atol=1e-6)


def test_a_new_run_without_its_fitted_json_is_refused_in_one_line(tmp_path):
    run = build_ensemble(complementary_members(tmp_path), method="weighted", out=tmp_path / "e")
    (run.path / FITTED_FILE).unlink()
    with pytest.raises(FerensError, match=r"fitted\.json: file not found") as err:
        load_fitted(run.path)
    assert "\n" not in str(err.value)
    write_json(run.path / FITTED_FILE, {"kind": "ensemble", "members": ["a"]})
    with pytest.raises(FerensError, match=r"fitted\.json: damaged"):
        load_fitted(run.path)


def test_an_adjusted_run_writes_fitted_json_and_older_ones_read_config(tmp_path):
    source = complementary_members(tmp_path)[0]
    adjusted = adjust_run(source, tmp_path / "adj", tau=0.5)
    saved = read_json(adjusted.path / FITTED_FILE)
    assert saved["kind"] == "adjusted" and saved["adjuster"]["fitted"]["tau_"] == 0.5
    fitted = load_fitted(adjusted.path)
    out = fitted.predict_log_proba(load_run(source).test.log_probs)
    np.testing.assert_allclose(np.exp(out), adjusted.test.probs, atol=1e-6)
    (adjusted.path / FITTED_FILE).unlink()
    with pytest.raises(FerensError, match="file not found"):
        load_fitted(adjusted.path)
    config = read_json(adjusted.path / "config.json")
    del config["fitted"]
    write_json(adjusted.path / "config.json", config)
    assert load_fitted(adjusted.path).tau_ == 0.5
    np.testing.assert_allclose(load_fitted(adjusted.path).log_prior_, fitted.log_prior_)
