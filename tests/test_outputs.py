"""Issue 15: output folders are replaced only when they are ferens' own, whole or not at all,
by one writer at a time; a failed command never blocks the corrected retry."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli
from test_ensemble import complementary_members

import ferens.ensemble as ensemble_module
from ferens.adjust import adjust_run
from ferens.ensemble import build_ensemble
from ferens.errors import FerensError
from ferens.outputs import folder_lock, output_folder
from ferens.predictions import load_run


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


def test_adjust_with_a_non_finite_tau_writes_nothing(tmp_path):
    members = complementary_members(tmp_path / "m")
    for tau in (float("nan"), float("inf"), -1.0):
        with pytest.raises(FerensError, match="expected a finite number"):
            adjust_run(members[0], tmp_path / "adj", tau=tau)
    assert not (tmp_path / "adj").exists()
    adjust_run(members[0], tmp_path / "adj", tau=0.5)
    adjust_run(members[0], tmp_path / "adj", tau=0.7)  # its own output: replaced
    assert load_run(tmp_path / "adj").config["tau"] == 0.7
