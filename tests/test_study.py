from __future__ import annotations

import json
import shutil

import pytest

from ferens.errors import FerensError
from ferens.study import lane_plan, load_study, run_study


def _study_file(tmp_path, tiny_csv, members: str) -> object:
    path = tmp_path / "study.toml"
    path.write_text(f"""
[study]
results_dir = "{tmp_path / 'results'}"
ensemble_methods = ["mean", "stack"]
adjust = ["a", "stack"]

[defaults]
data = "{tiny_csv}"
out_dir = "{tmp_path / 'runs'}"
width = 0.25
epochs = 1
batch_size = 16
{members}""")
    return path


def test_lanes_default_to_one_single_thread_member_per_core():
    assert lane_plan(pending=4, cores=2) == (2, 1)
    assert lane_plan(pending=1, cores=2) == (1, 2)
    assert lane_plan(pending=4, lanes=1, cores=2) == (1, 2)
    assert lane_plan(pending=0, cores=2) == (1, 2)


def test_study_file_errors_name_the_problem(tmp_path, tiny_csv):
    bad = _study_file(tmp_path, tiny_csv, '[[members]]\nname = "a"\nimbalance = "smote"\n')
    with pytest.raises(FerensError, match="imbalance='smote' is not one of"):
        load_study(bad)
    twice = _study_file(tmp_path, tiny_csv, '[[members]]\nname = "a"\n[[members]]\nname = "a"\n')
    with pytest.raises(FerensError, match="member names repeat"):
        load_study(twice)
    select = _study_file(tmp_path, tiny_csv, '[[members]]\nname = "a"\n').read_text().replace(
        'adjust = ', 'adjust_select = "recall"\nadjust = ')
    (tmp_path / "select.toml").write_text(select)
    with pytest.raises(FerensError, match="adjust_select='recall' is not one of"):
        load_study(tmp_path / "select.toml")
    typo = _study_file(tmp_path, tiny_csv, '[[members]]\nname = "a"\n').read_text()
    (tmp_path / "typo.toml").write_text(typo.replace('adjust = ["a", "stack"]',
                                                     'adjust = ["a", "stak"]'))
    with pytest.raises(FerensError, match=r"adjust names \['stak'\]"):
        load_study(tmp_path / "typo.toml")


@pytest.mark.slow
def test_study_trains_members_side_by_side_then_ensembles_and_reports(tmp_path, tiny_csv):
    path = _study_file(tmp_path, tiny_csv, '[[members]]\nname = "a"\nimbalance = "none"\n'
                                           '[[members]]\nname = "b"\nimbalance = "focal"\n')
    results = tmp_path / "results"
    outcome = run_study(path, lanes=2)
    assert outcome["failed"] == []
    for name in ("a", "b"):
        summary = json.loads((results / "members" / name / "summary.json").read_text())
        assert summary["threads"] == 1
        assert (results / "members" / name / "predictions" / "test.npz").is_file()
        assert not (results / "members" / name / "best.safetensors").exists()
    assert (results / "ensembles" / "stack" / "summary.json").is_file()
    assert (results / "report" / "report.html").is_file()
    names = ["a-adjusted", "stack-adjusted"]
    assert outcome["adjusted"] == [str(results / "adjusted" / n) for n in names]
    report = json.loads((results / "report" / "metrics.json").read_text())
    assert [r["name"] for r in report["runs"]][-2:] == names
    with pytest.raises(FerensError, match=r"no member\(s\) named \['c'\]"):
        run_study(path, only=["c"])
    # a second run trains nothing and finishes from the saved members
    mtime = (tmp_path / "runs" / "a" / "summary.json").stat().st_mtime
    assert run_study(path)["failed"] == []
    assert (tmp_path / "runs" / "a" / "summary.json").stat().st_mtime == mtime
    # a fresh clone has the committed results but no runs/: still nothing to train
    shutil.rmtree(tmp_path / "runs")
    assert run_study(path)["failed"] == []
    assert not (tmp_path / "runs" / "a").exists()
    # --only trains just the named members
    shutil.rmtree(results / "members" / "b")
    assert run_study(path, only=["a"])["adjusted"] == [str(results / "adjusted" / "a-adjusted")]
    assert not (tmp_path / "runs" / "b").exists()


def test_a_gpu_machine_gets_one_lane_per_gpu_with_the_cores_as_loader_workers(tmp_path,
                                                                              tiny_csv):
    from ferens.study import gpu_lane_plan, plan_slots

    assert gpu_lane_plan(pending=5, gpus=1, cores=16) == (1, 15)
    assert gpu_lane_plan(pending=5, gpus=4, cores=16) == (4, 3)
    assert gpu_lane_plan(pending=1, gpus=4, cores=16) == (1, 15)
    study = load_study(_study_file(tmp_path, tiny_csv, '[[members]]\nname = "a"\n'
                                                       '[[members]]\nname = "b"\n'))
    slots = plan_slots(study, study.members, gpus=2)
    assert [(s.gpu, s.threads) for s in slots] == [(0, 1), (1, 1)]
    cpu = plan_slots(study, study.members, gpus=0)
    assert all(s.gpu is None and s.workers is None for s in cpu)
    assert [s.threads for s in plan_slots(study, study.members, lanes=1, threads=1,
                                          gpus=0)] == [1]
