from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ferens.errors import FerensError
from ferens.study.lanes import lane_plan
from ferens.study.pipeline import run_study
from ferens.study.spec import load_study


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
    from ferens.study.lanes import gpu_lane_plan
    from ferens.study.local import plan_slots

    assert gpu_lane_plan(pending=5, gpus=1, cores=16) == (1, 8)  # capped: GPU_LOADER_WORKERS_MAX
    assert gpu_lane_plan(pending=5, gpus=4, cores=16) == (4, 2)
    assert gpu_lane_plan(pending=1, gpus=4, cores=16) == (1, 8)
    assert gpu_lane_plan(pending=2, gpus=2, cores=2) == (2, 0)
    study = load_study(_study_file(tmp_path, tiny_csv, '[[members]]\nname = "a"\n'
                                                       '[[members]]\nname = "b"\n'))
    slots = plan_slots(study, study.members, gpus=2)
    assert [(s.gpu, s.threads) for s in slots] == [(0, 1), (1, 1)]
    cpu = plan_slots(study, study.members, gpus=0)
    assert all(s.gpu is None and s.workers is None for s in cpu)
    assert [s.threads for s in plan_slots(study, study.members, lanes=1, threads=1,
                                          gpus=0)] == [1]


@pytest.mark.parametrize("change, message", [
    (('results_dir = ', 'result_dir = '), r"unknown \[study\] key\(s\) \['result_dir'\]"),
    (('[defaults]', '[default]'), r"unknown table\(s\) \['default'\]"),
    (('lanes = 0', 'lanes = "two"'), r"\[study\] lanes='two': expected"),
    (('ensemble_methods = ["mean", "stack"]', 'ensemble_methods = "mean"'),
     r"ensemble_methods='mean': expected"),
    (('lanes = 0', 'adjust_max_accuracy_loss = "x"'), "adjust_max_accuracy_loss='x'"),
    (('results_dir = "', 'results_dir = 3\n# "'), r"results_dir=3: expected"),
    (('[[members]]', '[members]'), r"\[\[members\]\]"),
], ids=["result_dir", "default", "lanes", "methods", "max_loss", "results_dir", "members"])
def test_a_study_file_with_unknown_or_mistyped_settings_is_refused(tmp_path, tiny_csv, change,
                                                                   message):
    text = _study_file(tmp_path, tiny_csv, '[[members]]\nname = "a"\n').read_text()
    text = text.replace("[study]\n", "[study]\nlanes = 0\n", 1).replace(*change, 1)
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(FerensError, match=message):
        load_study(tmp_path / "bad.toml")


def test_every_setting_read_today_and_the_ray_table_are_accepted(tmp_path, tiny_csv):
    text = _study_file(tmp_path, tiny_csv, '[[members]]\nname = "a"\n').read_text()
    text = text.replace("[study]\n", '[study]\nlanes = 2\nferplus = "v.csv"\ndata = "d.csv"\n'
                        'extra_runs = ["x"]\nadjust_select = "accuracy-budget"\n'
                        'adjust_max_accuracy_loss = 0.02\n', 1)
    (tmp_path / "ok.toml").write_text(text + '\n[ray]\nmax_retries = 1\n')
    study = load_study(tmp_path / "ok.toml")
    assert study.lanes == 2 and study.extra_runs == ["x"] and study.ferplus == "v.csv"
    assert study.adjust_max_accuracy_loss == 0.02



def test_runs_dir_keeps_every_member_in_one_folder_and_the_environment_overrides_it(
        tmp_path, tiny_csv, monkeypatch):
    members = '[[members]]\nname = "a"\n\n[[members]]\nname = "b"\nout_dir = "own"\n'
    text = _study_file(tmp_path, tiny_csv, members).read_text()
    text = text.replace(f'out_dir = "{tmp_path / "runs"}"\n', "")
    (tmp_path / "s.toml").write_text(text.replace("[study]\n", '[study]\nruns_dir = "lanes"\n'))
    monkeypatch.delenv("FERENS_RUNS_DIR", raising=False)
    a, b = load_study(tmp_path / "s.toml").members
    assert (a.out_dir, b.out_dir) == ("lanes", "own")  # a member's own out_dir wins
    monkeypatch.setenv("FERENS_RUNS_DIR", str(tmp_path / "kept"))
    a, b = load_study(tmp_path / "s.toml").members
    assert (a.run_dir, b.out_dir) == (tmp_path / "kept" / "a", "own")

# --- interrupted studies (issue 15, item 4) ---------------------------------------------------

DRIVER = """
import sys
from pathlib import Path

import ferens.study.local as study
from ferens.study.spec import load_study

pids = Path(sys.argv[2])


def sleeping_member(spec, slot):  # stands in for train-member: records its pid, then waits
    name = Path(spec).name.split(".")[0]
    return [sys.executable, "-c", "import os, time; "
            f"open({str(pids)!r} + '/{name}', 'w').write(str(os.getpid())); time.sleep(300)"]


study.member_command = sleeping_member
study.train_members(load_study(sys.argv[1]), lanes=2, threads=1, poll=0.1)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has stopped; only its exit status is left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux")
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_killing_the_study_driver_stops_its_members(tmp_path, tiny_csv, signal_name):
    path = _study_file(tmp_path, tiny_csv, '[[members]]\nname = "a"\n[[members]]\nname = "b"\n')
    (tmp_path / "driver.py").write_text(DRIVER)
    pids = tmp_path / "pids"
    pids.mkdir()
    root = str(Path(__file__).resolve().parents[2])  # this checkout's ferens, not an install's
    driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(path),
                               str(pids)], stderr=subprocess.PIPE,
                              env=os.environ | {"PYTHONPATH": root})
    members = []
    try:
        deadline = time.monotonic() + 120
        while len(members) < 2 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.1)
            members = [int(p.read_text()) for p in pids.iterdir() if p.read_text()]
        assert len(members) == 2, driver.stderr.read().decode() if driver.poll() else "slow"
        driver.send_signal(getattr(signal, signal_name))
        driver.wait(timeout=60)
        deadline = time.monotonic() + 20
        while any(map(_alive, members)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, members)), "members outlived the study as orphans"
        if signal_name == "SIGTERM":  # the driver stopped them itself, then said so
            assert "the members were stopped" in driver.stderr.read().decode()
    finally:
        for pid in [*members, driver.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        driver.wait()


def test_a_rerun_never_starts_a_second_writer_on_a_member_still_training(
        tmp_path, tiny_csv, monkeypatch, capsys):
    import ferens.study.local as study_module
    from ferens.io import folder_lock

    study = load_study(_study_file(tmp_path, tiny_csv, '[[members]]\nname = "a"\n'))
    started = []
    monkeypatch.setattr(study_module, "member_command",
                        lambda spec, slot: started.append(spec) or [sys.executable, "-c", ""])
    with folder_lock(study.members[0].run_dir):  # an earlier study's member, still training
        failed = study_module.train_members(study, poll=0.01)
    assert failed == ["a"] and started == []
    assert "another ferens process is training" in capsys.readouterr().err


def test_a_study_keeps_ferplus_label_members_out_of_its_ensembles(tmp_path, tiny_csv, capsys):
    from helpers import complementary_members

    from ferens.io import write_json
    from ferens.study.pipeline import combine_and_report

    study = load_study(_study_file(tmp_path, tiny_csv, "".join(
        f'[[members]]\nname = "{n}"\n' for n in "abc")))
    study.ensemble_methods, study.adjust = ("mean",), []
    for run in complementary_members(study.results_dir / "members"):
        labels = "ferplus" if run.name == "c" else "fer2013"
        write_json(run / "config.json", {"name": run.name, "kind": "member", "labels": labels})
    outcome = combine_and_report(study)
    mean = json.loads((study.results_dir / "ensembles" / "mean" / "config.json").read_text())
    assert [m["name"] for m in mean["members"]] == ["a", "b"]
    assert len(outcome["members"]) == 3  # the report still shows every member
    assert "not ensembling c: trained with --labels ferplus" in capsys.readouterr().err


def test_ensemble_groups_combine_only_their_runs_once_all_have_finished(tmp_path, tiny_csv,
                                                                        capsys):
    from helpers import complementary_members

    from ferens.study.pipeline import combine_and_report

    groups = ('[[ensembles]]\nname = "ab"\nmembers = ["a", "b"]\nmethods = ["mean"]\n'
              '[[ensembles]]\nname = "late"\nmembers = ["a", "d"]\n')
    study = load_study(_study_file(tmp_path, tiny_csv, "".join(
        f'[[members]]\nname = "{n}"\n' for n in "abcd") + groups))
    assert [(g.name, g.members, g.methods) for g in study.groups] == [
        ("ab", ("a", "b"), ("mean",)), ("late", ("a", "d"), ("mean", "stack"))]
    study.adjust = []
    complementary_members(study.results_dir / "members")  # a, b, c finished; d did not
    outcome = combine_and_report(study)
    ab = study.results_dir / "ensembles" / "ab-mean"
    assert str(ab) in outcome["ensembles"]
    assert [m["name"] for m in json.loads((ab / "config.json").read_text())["members"]] == [
        "a", "b"]
    assert not (study.results_dir / "ensembles" / "late-mean").exists()
    assert "not building ensembles late: ['d'] not finished" in capsys.readouterr().err


@pytest.mark.parametrize("table, message", [
    ('name = "s"\nmembers = ["a"]\n', "two or more distinct run names"),
    ('name = "s"\nmembers = ["a", "zz"]\n', r"\['zz'\] are neither members nor extra_runs"),
    ('name = "s/x"\nmembers = ["a", "b"]\n', r"name='s/x': expected a run-style name"),
    ('name = "-s"\nmembers = ["a", "b"]\n', r"name='-s': expected a run-style name"),
    ('name = "s"\nmembers = ["a", "b"]\nmethods = ["median"]\n', "methods=\\['median'\\]"),
    ('name = "s"\nmembers = ["a", "b"]\nmember = 1\n', r"unknown key\(s\) \['member'\]"),
    ('name = "g-logit"\nmembers = ["a", "b"]\nmethods = ["mean"]\n[[ensembles]]\nname = "g"\n'
     'members = ["a", "b"]\nmethods = ["logit-mean"]\n', r"the folder\(s\) \['g-logit-mean'\]"),
], ids=["one-member", "unknown-run", "name", "leading-dash", "method", "key", "folder-clash"])
def test_an_ensemble_group_with_a_bad_setting_is_refused(tmp_path, tiny_csv, table, message):
    path = _study_file(tmp_path, tiny_csv, '[[members]]\nname = "a"\n[[members]]\nname = "b"\n'
                       f"[[ensembles]]\n{table}")
    with pytest.raises(FerensError, match=message):
        load_study(path)


def test_a_child_sees_the_parents_own_gpu_when_the_parent_was_masked():
    from ferens.study.local import child_visible_devices

    assert child_visible_devices(1, None) == "1"
    assert child_visible_devices(1, "") == "1"
    assert child_visible_devices(0, "3") == "3"
    assert child_visible_devices(1, "2, 5") == "5"
    assert child_visible_devices(1, "GPU-aaa,GPU-bbb") == "GPU-bbb"
    with pytest.raises(FerensError, match="GPU 2 is not among"):
        child_visible_devices(2, "2,5")


def test_a_member_stopped_by_the_deadline_comes_back_stays_out_of_ensembles_and_trains_on(
        tmp_path, tiny_csv, monkeypatch, capsys):
    import ferens.train.member as train_module
    from ferens.study.members import is_committed, pending_members

    path = _study_file(tmp_path, tiny_csv, '[[members]]\nname = "a"\nepochs = 3\n'
                                           '[[members]]\nname = "b"\n')
    path.write_text(path.read_text().replace('adjust = ["a", "stack"]', 'adjust = []'))
    study = load_study(path)
    a = study.members[0]
    calls = []
    monkeypatch.setattr(train_module, "finish_seconds",
                        lambda *args: calls.append(1) or (1e9 if len(calls) >= 1 else 0.0))
    train_module.train_member(a, show_progress=False, deadline=time.time() + 3600)
    monkeypatch.undo()
    train_module.train_member(study.members[1], show_progress=False)
    outcome = run_study(path, train=False)  # collects both, ensembles neither alone
    err = capsys.readouterr().err
    assert "not ensembling a: a deadline stopped its training early" in err
    results = tmp_path / "results"
    saved = json.loads((results / "members" / "a" / "summary.json").read_text())
    assert saved["stopped_by_deadline"] and saved["epochs_run"] == 1
    assert (results / "members" / "a" / "predictions" / "train.npz").is_file()
    assert outcome["ensembles"] == []  # one finished member is no ensemble
    assert not is_committed(a, results)
    assert [m.name for m in pending_members(study)[0]] == ["a"]
    run_study(path)  # trains a on, in its own process, from its checkpoint
    summary = json.loads((results / "members" / "a" / "summary.json").read_text())
    assert not summary["stopped_by_deadline"] and summary["epochs_run"] == 3
    assert summary["resumes"] == 1
    assert is_committed(a, results)


def test_no_member_starts_once_the_deadline_has_passed(tmp_path, tiny_csv, monkeypatch, capsys):
    from ferens.study.local import train_members

    path = _study_file(tmp_path, tiny_csv, '[[members]]\nname = "a"\n')
    monkeypatch.setenv("FERENS_DEADLINE", str(time.time() - 1))
    assert train_members(load_study(path)) == ["a"]
    assert "NOT STARTED a: the deadline ($FERENS_DEADLINE) has passed" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "a").exists()


def test_collecting_a_member_never_overwrites_files_ferens_did_not_write(tmp_path):
    """Issue 28: results_dir/members/<name> is replaced only when it is an earlier copy."""
    from ferens.config import TrainConfig
    from ferens.runs import MEMBER_OUTPUTS
    from ferens.study.members import collect_member

    cfg = TrainConfig(name="m", out_dir=str(tmp_path / "runs"))
    for relative in MEMBER_OUTPUTS:
        (cfg.run_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / relative).write_text("{}")
    cfg.save(cfg.run_dir / "config.json")
    results = tmp_path / "results"
    dest = collect_member(cfg, results)
    (cfg.run_dir / "summary.json").write_text('{"version": 2}')
    collect_member(cfg, results)  # its own earlier copy: replaced
    assert json.loads((dest / "summary.json").read_text()) == {"version": 2}
    (dest / "notes.md").write_text("my notes")
    (cfg.run_dir / "summary.json").write_text('{"version": 3}')
    with pytest.raises(FerensError, match="refusing to replace it"):
        collect_member(cfg, results)
    assert (dest / "notes.md").read_text() == "my notes"
    assert json.loads((dest / "summary.json").read_text()) == {"version": 2}
    assert sorted(p.name for p in (results / "members").iterdir()) == ["m"]


def test_training_children_get_tcmalloc_when_installed_unless_told_otherwise(tmp_path):
    from ferens.study.local import allocator_env

    lib = tmp_path / "usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
    root = str(tmp_path)
    assert allocator_env({}, "x86_64", root) == {}  # not installed: the system malloc
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"")
    assert allocator_env({}, "x86_64", root) == {"LD_PRELOAD": str(lib)}
    assert allocator_env({"FERENS_ALLOCATOR": "system"}, "x86_64", root) == {}
    assert allocator_env({"LD_PRELOAD": "/mine.so"}, "x86_64", root) == {}  # the user's wins
