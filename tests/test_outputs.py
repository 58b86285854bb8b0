"""Issue 15: output folders are replaced only when they are ferens' own, whole or not at all,
by one writer at a time; a failed command never blocks the corrected retry."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli
from helpers import complementary_members

import ferens.combine.ensemble as ensemble_module
from ferens.combine.adjust import adjust_run
from ferens.combine.ensemble import build_ensemble
from ferens.errors import FerensError
from ferens.io import folder_lock
from ferens.outputs import output_folder
from ferens.runs import load_run


def _user_folder(path):
    path.mkdir()
    (path / "summary.json").write_text('{"mine": true}')
    (path / "thesis.tex").write_text("keep me")
    return path


def test_ensemble_and_adjust_refuse_a_folder_they_did_not_write(tmp_path, monkeypatch, capsys):
    members = complementary_members(tmp_path / "m")
    for command in (["ensemble", *members, "--out"], ["adjust", members[0], "--out"]):
        out = _user_folder(tmp_path / command[0])
        code, _, err = run_cli([*command, out], monkeypatch, capsys)
        assert code == 2 and "refusing to replace it" in err and "Traceback" not in err
        assert (out / "thesis.tex").read_text() == "keep me"
        assert json.loads((out / "summary.json").read_text()) == {"mine": True}


def test_an_interrupted_rerun_leaves_the_earlier_output_whole(tmp_path, monkeypatch):
    members = complementary_members(tmp_path / "m")
    out = tmp_path / "ens"
    first = build_ensemble(members, method="mean", out=out)
    real = ensemble_module.write_json

    def dies_half_way(path, obj):
        if path.name == "summary.json":
            raise KeyboardInterrupt
        return real(path, obj)

    monkeypatch.setattr(ensemble_module, "write_json", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        build_ensemble(members[:2], method="weighted", out=out)
    again = load_run(out)
    assert again.config["method"] == "mean" and len(again.config["members"]) == 3
    assert np.array_equal(again.test.logits, first.test.logits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens", "m"]  # nothing left beside


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path):
    members = complementary_members(tmp_path / "m")
    out = tmp_path / "ens"
    with folder_lock(out):
        with pytest.raises(FerensError, match="another ferens process is writing it"):
            build_ensemble(members, method="mean", out=out)
        with pytest.raises(FerensError, match="another ferens process"):
            with output_folder(out, "ensemble"):
                pass
    build_ensemble(members, method="mean", out=out)  # free again once the lock is released


HOLDER = """
import sys, time
from ferens.io import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(300)
"""


def test_a_lock_left_by_a_killed_writer_never_blocks_the_next_one(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from ferens.io import lock_path

    out = tmp_path / "ens"
    root = str(Path(__file__).resolve().parents[1])  # this checkout's ferens, not an install's
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE,
                              text=True, env=os.environ | {"PYTHONPATH": root})
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with pytest.raises(FerensError, match="another ferens process is writing it"):
            with folder_lock(out):
                pass
        assert time.monotonic() - start < 5  # refused at once, not after waiting
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(out).is_file()  # the killed writer could not remove its lock file
    with folder_lock(out):  # but the kernel dropped its lock with the process
        pass
    assert not lock_path(out).exists()


def test_adjust_with_a_non_finite_tau_writes_nothing(tmp_path):
    members = complementary_members(tmp_path / "m")
    for tau in (float("nan"), float("inf"), -1.0):
        with pytest.raises(FerensError, match="expected a finite number"):
            adjust_run(members[0], tmp_path / "adj", tau=tau)
    assert not (tmp_path / "adj").exists()
    adjust_run(members[0], tmp_path / "adj", tau=0.5)
    adjust_run(members[0], tmp_path / "adj", tau=0.7)  # its own output: replaced
    assert load_run(tmp_path / "adj").config["tau"] == 0.7


# --- issue 28: ownership proven by a file list, unpredictable temp names, swaps a kill cannot
# --- break, and a lock every writer sees ---------------------------------------------------

def _one_line(code: int, err: str) -> None:
    assert code == 2, err
    assert err.startswith("ferens: error:") and err.count("\n") == 1, err


def test_report_never_replaces_a_folder_that_only_looks_like_an_old_report(tmp_path,
                                                                         monkeypatch, capsys):
    members = complementary_members(tmp_path / "m")
    out = tmp_path / "rep"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"runs": [], "class_names": []}))
    (out / "notes.md").write_text("my notes")
    (out / "holiday.png").write_bytes(b"my photo")
    code, _, err = run_cli(["report", members[0], "--out", out], monkeypatch, capsys)
    _one_line(code, err)
    assert "refusing to replace it" in err
    assert (out / "notes.md").read_text() == "my notes"
    assert (out / "holiday.png").read_bytes() == b"my photo"
    code, _, err = run_cli(["report", members[0], "--out", tmp_path / "real"], monkeypatch,
                           capsys)
    assert code == 0, err
    (tmp_path / "real" / "notes.md").write_text("added by the user")
    code, _, err = run_cli(["report", members[0], "--out", tmp_path / "real"], monkeypatch,
                           capsys)
    _one_line(code, err)
    assert (tmp_path / "real" / "notes.md").read_text() == "added by the user"


def test_atomic_writes_never_follow_a_link_planted_at_a_guessable_name(tmp_path):
    import os

    from ferens.io import atomic_path, write_json

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "metrics.json"
    for name in (f"{target.name}.{os.getpid()}.tmp", f"{target.name}.tmp",
                 f".{target.name}.tmp"):
        (tmp_path / name).symlink_to(victim)
    write_json(target, {"accuracy": 0.5})
    assert victim.read_text() == "precious"
    assert json.loads(target.read_text()) == {"accuracy": 0.5}
    assert (target.stat().st_mode & 0o777) == 0o666 & ~_umask()
    seen = []
    for _ in range(2):
        with atomic_path(target) as tmp:
            seen.append(tmp.name)
            tmp.write_text("x")
    assert seen[0] != seen[1] and str(os.getpid()) not in "".join(seen)


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _old_report(out):
    with output_folder(out, "report") as tmp:
        (tmp / "report.md").write_text("old")
        (tmp / "metrics.json").write_text(json.dumps({"files": ["metrics.json", "report.md"]}))


SWAP_KILLER = """
import os, sys
from pathlib import Path
import ferens.outputs as o
out, mode = Path(sys.argv[1]), sys.argv[2]
if mode == "no-exchange":
    o.exchange = lambda a, b: False
real_exchange, real_replace = o.exchange, os.replace
def killed_after(real):
    def step(*args):
        result = real(*args)
        os._exit(9)  # kill -9 right after the first step of the swap
    return step
o.exchange, os.replace, os.rename = (killed_after(real_exchange), killed_after(real_replace),
                                     killed_after(os.rename))
with o.output_folder(out, "report") as tmp:
    (tmp / "report.md").write_text("new")
    (tmp / "metrics.json").write_text('{"files": ["metrics.json", "report.md"]}')
"""


@pytest.mark.parametrize("mode", ["exchange", "no-exchange"])
def test_a_kill_during_the_swap_never_loses_the_output_and_a_rerun_cleans_up(tmp_path, mode):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "rep"
    _old_report(out)
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", SWAP_KILLER, str(out), mode], cwd=repo,
                          capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert hidden, "the kill left nothing to clean up: the test did not kill mid-swap"
    if mode == "exchange":  # one atomic step: the new output is in place
        assert (out / "report.md").read_text() == "new"
    with output_folder(out, "report") as tmp:  # the re-run puts back what the kill left aside
        assert (out / "report.md").read_text() in ("old", "new")
        (tmp / "report.md").write_text("third")
        (tmp / "metrics.json").write_text('{"files": ["metrics.json", "report.md"]}')
    assert (out / "report.md").read_text() == "third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]  # nothing left beside


def test_a_rerun_restores_an_output_an_older_ferens_left_aside_and_spares_other_folders(
        tmp_path):
    out = tmp_path / "rep"
    _old_report(tmp_path / "scratch")
    aside = tmp_path / ".rep.old-abcd1234"
    aside.mkdir()
    (tmp_path / "scratch").rename(aside / "previous")  # what a kill between the renames left
    mine = tmp_path / ".rep.ferens-zzzz9999"  # named like a work folder, but no marker
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    with output_folder(out, "report") as tmp:
        assert (out / "report.md").read_text() == "old"
        (tmp / "metrics.json").write_text('{"files": ["metrics.json"]}')
    assert not aside.exists() and (mine / "keep.txt").read_text() == "mine"


def test_the_lock_is_seen_by_processes_with_another_temp_folder(tmp_path, monkeypatch):
    import tempfile

    out = tmp_path / "ens"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp-a"))
    (tmp_path / "tmp-a").mkdir()
    (tmp_path / "tmp-b").mkdir()
    with folder_lock(out):
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp-b"))  # another TMPDIR
        with pytest.raises(FerensError, match="another ferens process is writing it"):
            with folder_lock(out):
                pass
    with folder_lock(out):  # free again once released
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp-a", "tmp-b"]  # no lock left


@pytest.mark.parametrize("planted", ["link", "fifo"])
def test_a_link_or_fifo_planted_at_the_lock_name_is_refused(tmp_path, planted):
    import os

    from ferens.io import lock_path

    out = tmp_path / "ens"
    victim = tmp_path / "victim"
    if planted == "link":
        lock_path(out).symlink_to(victim)
    else:
        os.mkfifo(lock_path(out))
    with pytest.raises(FerensError, match="lock file of"):
        with folder_lock(out):
            pass
    assert not victim.exists()
