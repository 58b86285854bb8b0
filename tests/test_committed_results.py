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
    _, results, script = study
    monkeypatch.syspath_prepend(str(script.parent))  # the v2 script imports study_tables
    spec = importlib.util.spec_from_file_location(script.stem, script)
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    copy = tmp_path / results.name
    shutil.copytree(results, copy, ignore=shutil.ignore_patterns("*.png", "*.html"))
    tables.main(copy)
    text = capsys.readouterr().out
    for name in _committed_members(results):
        assert f"| {name} |" in text
    assert (copy / "accuracy_vs_minutes.png").stat().st_size > 10_000
