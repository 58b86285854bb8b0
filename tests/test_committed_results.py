"""The committed studies in results/ must match their committed study files, so every result
there can be reproduced from a config and a command (and a fresh clone retrains nothing)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from ferens.study.members import is_committed
from ferens.study.spec import load_study

ROOT = Path(__file__).resolve().parents[1]
# (study file, its results folder, the script that writes its tables)
STUDIES = {
    "v1": ("study.toml", "study", "study_tables.py"),
    "v2": ("study_v2.toml", "study_v2", "study_v2_tables.py"),
    "v3": ("study_v3.toml", "study_v3", "study_v3_tables.py"),
}


def _committed_members(results: Path) -> list[str]:
    return sorted(p.name for p in (results / "members").iterdir() if p.is_dir())


@pytest.fixture(params=sorted(STUDIES))
def study(request) -> tuple[Path, Path, Path]:
    study_file, results, script = STUDIES[request.param]
    return (ROOT / "experiments" / study_file, ROOT / "results" / results,
            ROOT / "experiments" / script)


def test_every_committed_member_is_declared_with_the_config_it_was_trained_with(study,
                                                                               monkeypatch):
    study_file, results, _ = study
    monkeypatch.chdir(ROOT)  # results_dir in the study file is relative to the repo root
    loaded = load_study(study_file)
    declared = {cfg.name: cfg for cfg in loaded.members}
    committed = _committed_members(results)
    assert committed, f"no committed members under {results / 'members'}"
    assert set(committed) <= set(declared), set(committed) - set(declared)
    stale = [name for name in committed if not is_committed(declared[name], loaded.results_dir)]
    assert not stale, f"config in {study_file.name} differs from the committed run: {stale}"


def test_committed_ensembles_cover_every_committed_member(study, monkeypatch):
    study_file, results, _ = study
    monkeypatch.chdir(ROOT)
    loaded = load_study(study_file)
    every = set(_committed_members(results)) | {Path(p).name for p in loaded.extra_runs}
    expected = {method: every for method in loaded.ensemble_methods}
    for group in loaded.groups:
        expected |= {f"{group.name}-{method}": set(group.members) for method in group.methods}
    for folder in sorted((results / "ensembles").iterdir()):
        config = json.loads((folder / "config.json").read_text())
        combined = {m["name"] for m in config["members"]}
        assert folder.name in expected, f"{folder.name}: not an ensemble of {study_file.name}"
        assert combined == expected[folder.name], (
            f"{folder.name}: rerun `ferens study {study_file.name} --no-train`")


def test_study_tables_render_every_committed_member(study, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    study_file, results, script = study
    monkeypatch.syspath_prepend(str(script.parent))  # the v2 script imports study_tables
    spec = importlib.util.spec_from_file_location(script.stem, script)
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    v3 = results.name == "study_v3"  # main(study file, root); v2's members are read in place
    copy = (tmp_path / "results" if v3 else tmp_path) / results.name
    shutil.copytree(results, copy, ignore=shutil.ignore_patterns("*.png", "*.html"))
    if v3:
        (tmp_path / "results" / "study_v2").symlink_to(ROOT / "results" / "study_v2")
        tables.main(study_file, root=tmp_path)
    else:
        tables.main(copy)
    text = capsys.readouterr().out
    for name in _committed_members(results):
        assert f"| {name} |" in text
    plot = "disagreement_vs_gain.png" if v3 else "accuracy_vs_minutes.png"
    assert (copy / plot).stat().st_size > 10_000


def _committed_ensembles() -> list[Path]:
    return sorted(p for results in ("study", "study_v2")
                  for p in (ROOT / "results" / results / "ensembles").iterdir()
                  if (p / "summary.json").is_file())


def _members(folder: Path):
    from ferens.combine.ensemble import check_members
    from ferens.runs import load_run

    config = json.loads((folder / "config.json").read_text())
    return config, check_members([load_run(ROOT / m["path"]) for m in config["members"]])


@pytest.mark.parametrize("folder", _committed_ensembles(), ids=lambda p: f"{p.parent.parent.name}"
                         f"/{p.name}")
def test_committed_ensembles_load_from_their_summary_and_refit_to_the_same_test_accuracy(
        folder):
    """The committed ensembles predate fitted.json: their parameters are read back from
    summary.json and reproduce the saved test predictions; refitting each on its committed
    members' val predictions gives the committed test accuracy (the stacker with its
    committed C; the C search itself is checked on the small stacks below)."""
    import numpy as np

    from ferens.combine.ensemble import combine
    from ferens.combine.fitted import FITTED_FILE, load_fitted, make_combiner
    from ferens.runs import load_run

    assert not (folder / FITTED_FILE).exists()  # results/ is not rewritten
    config, members = _members(folder)
    saved = load_run(folder)
    summary = saved.summary
    fitted = load_fitted(folder)
    out = fitted.predict_log_proba([m.test.logits for m in members])
    assert np.abs(np.exp(out) - saved.test.probs).max() < 1e-5
    options = config["options"]
    if config["method"] == "stack":
        combiner = make_combiner("stack", options["seed"], stack_c=summary["details"]["C"])
        combiner.fit([m.val.log_probs for m in members], members[0].val.labels)
        test = combiner.predict_log_proba([m.test.log_probs for m in members])
    else:
        test = combine(members, config["method"], options["temperature"], options["seed"],
                       options["greedy_metric"]).test.log_probs
    accuracy = float((test.argmax(1) == members[0].test.labels).mean())
    assert accuracy == summary["test"]["accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["seeds-stack", "long-seeds-stack"])
def test_the_stackers_c_search_reproduces_the_committed_choice(name):
    from ferens.combine.ensemble import combine

    folder = ROOT / "results" / "study_v2" / "ensembles" / name
    config, members = _members(folder)
    summary = json.loads((folder / "summary.json").read_text())
    result = combine(members, "stack", seed=config["options"]["seed"])
    assert result.details["C"] == summary["details"]["C"]
    assert float((result.test.predicted == result.test.labels).mean()) == summary["test"][
        "accuracy"]
    assert float((result.val.predicted == result.val.labels).mean()) == summary["val"][
        "accuracy"]
