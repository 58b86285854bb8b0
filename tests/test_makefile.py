"""`make demo` wires the data into every step that can use it (dry runs: nothing executes)."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry_run(**variables) -> str:
    args = [f"{k}={v}" for k, v in variables.items()]
    # -o install: do not consider the .venv install step (it may be missing in a bare checkout)
    out = subprocess.run(["make", "-n", "-o", "install", "-o", ".venv/.installed", "demo", *args],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout


def _line(text: str, command: str) -> str:
    joined = text.replace("\\\n", " ")
    return next(line for line in joined.splitlines() if f"ferens {command}" in line)


def test_demo_with_the_data_evaluates_the_shipped_model_and_reports_with_thumbnails(tmp_path):
    data = tmp_path / "fer2013.csv.gz"
    data.write_bytes(b"")
    out = _dry_run(DATA=data, FERPLUS=tmp_path / "missing.csv")
    assert f"--data {data}" in _line(out, "evaluate")
    report = _line(out, "report")
    assert f"--data {data}" in report
    assert "--ferplus" not in report
    assert "ensembles/demo-diverse" in report and "results/study_v2/members/*" in report
    assert "results/study_v3/members/*" in _line(out, "ensemble")


def test_demo_without_the_data_says_it_skips_the_evaluation(tmp_path):
    out = _dry_run(DATA=tmp_path / "missing.csv.gz", FERPLUS=tmp_path / "missing.csv")
    assert "skipping the shipped model's re-scoring" in out
    assert "--data" not in _line(out, "report")
