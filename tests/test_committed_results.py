"""The committed study in results/ must match the committed study file, so every result there
can be reproduced from a config and a command (and a fresh clone retrains nothing)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from ferens.study import is_committed, load_study

ROOT = Path(__file__).resolve().parents[1]
STUDY_FILE = ROOT / "experiments" / "study.toml"
RESULTS = ROOT / "results" / "study"


def _committed_members() -> list[str]:
    return sorted(p.name for p in (RESULTS / "members").iterdir() if p.is_dir())


def test_every_committed_member_is_declared_with_the_config_it_was_trained_with(monkeypatch):
    monkeypatch.chdir(ROOT)  # results_dir in the study file is relative to the repo root
    study = load_study(STUDY_FILE)
    declared = {cfg.name: cfg for cfg in study.members}
    committed = _committed_members()
    assert committed, "no committed members under results/study/members"
    assert set(committed) <= set(declared), set(committed) - set(declared)
    stale = [name for name in committed if not is_committed(declared[name], study.results_dir)]
    assert not stale, f"config in experiments/study.toml differs from the committed run: {stale}"


def test_committed_ensembles_cover_every_committed_member():
    members = set(_committed_members())
    for folder in sorted((RESULTS / "ensembles").iterdir()):
        config = json.loads((folder / "config.json").read_text())
        combined = {m["name"] for m in config["members"]}
        assert combined == members, f"{folder.name}: rerun `ferens study ... --no-train`"


def test_study_tables_render_every_committed_member(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location(
        "study_tables", ROOT / "experiments" / "study_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    copy = tmp_path / "study"
    shutil.copytree(RESULTS, copy, ignore=shutil.ignore_patterns("*.png", "*.html"))
    tables.main(copy)
    text = capsys.readouterr().out
    for name in _committed_members():
        assert f"| {name} |" in text
    assert (copy / "accuracy_vs_minutes.png").stat().st_size > 10_000
