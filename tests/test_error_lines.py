"""Issue 28, the error-message half: hostile input and failing disks give one line and exit
code 2 (never a traceback), the optional data cache never blocks work, and what a newcomer
sees (help texts, run names, progress) says what is happening."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import fer_rows, run_cli, write_fer_csv
from helpers import complementary_members
from trained_helpers import _predict, tiny_member_on_its_own_csv

from ferens import outputs
from ferens.data.fer2013 import load_fer2013
from ferens.deploy.export import export_bundle
from ferens.errors import FerensError

WRITING_COMMANDS = ("ensemble", "adjust", "report", "export", "predict", "evaluate", "study",
                    "train-member")


@pytest.fixture(scope="module")
def member(tmp_path_factory) -> Path:
    return tiny_member_on_its_own_csv(tmp_path_factory, "lines")


@pytest.fixture(scope="module")
def bundle(member, tmp_path_factory) -> Path:
    return export_bundle(member, tmp_path_factory.mktemp("bundle") / "b.ferens")


def _last_line_error(code: int, err: str) -> str:
    """The command failed with exit code 2 and one `ferens: error:` line, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ferens: error:"), err
    return last


def _data_of(member: Path) -> Path:
    return Path(json.loads((member / "config.json").read_text())["data"])


def _command(command: str, out: Path, member: Path, bundle: Path, face: Path,
             tmp_path: Path) -> list:
    """The command line of a writing command whose output goes to ``out``."""
    data = _data_of(member)
    if command in ("ensemble", "adjust", "report", "study"):
        runs = complementary_members(tmp_path / "m")
    if command == "study":
        study = tmp_path / "study.toml"
        study.write_text(f'[study]\nresults_dir = "{out}"\nensemble_methods = ["mean"]\n'
                         f'extra_runs = {json.dumps([str(r) for r in runs])}\n'
                         f'[[members]]\nname = "never"\ndata = "{data}"\n'
                         f'out_dir = "{tmp_path / "runs"}"\n')
    return {"ensemble": lambda: ["ensemble", *runs, "--out", out],
            "adjust": lambda: ["adjust", runs[0], "--out", out],
            "report": lambda: ["report", *runs, "--out", out],
            "export": lambda: ["export", member, "--out", out],
            "predict": lambda: _predict(bundle, face, out),
            "evaluate": lambda: ["evaluate", "--model", bundle, "--data", data, "--out",
                                 out / "metrics.json", "--quiet"],
            "study": lambda: ["study", study, "--no-train"],
            "train-member": lambda: ["train-member", "--data", data, "--out-dir", out,
                                     "--name", "m", "--epochs", "1", "--width", "0.25",
                                     "--threads", "1", "--quiet"]}[command]()


def _failing_disk(monkeypatch, root: Path, error: int, mkdir_too: bool) -> None:
    """Every rename into ``root`` (and, for a read-only or forbidden folder, every folder
    created under it) fails with ``error``, as on a full, read-only or foreign disk."""
    real_replace, real_mkdir = os.replace, os.mkdir

    def under(path) -> bool:
        return Path(os.fsdecode(path)).absolute().is_relative_to(root.absolute())

    def replace(src, dst, *args, **kwargs):
        if under(dst):
            raise OSError(error, os.strerror(error), os.fsdecode(dst))
        return real_replace(src, dst, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if under(path):
            raise OSError(error, os.strerror(error), os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    real_renameat2 = outputs._renameat2

    def renameat2(src, dst, flags):  # the Linux swap (RENAME_NOREPLACE / RENAME_EXCHANGE)
        if under(dst):
            raise OSError(error, os.strerror(error), os.fsdecode(dst))
        return real_renameat2(src, dst, flags)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(outputs, "_renameat2", renameat2)
    if mkdir_too:
        monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.mark.parametrize("command", WRITING_COMMANDS)
@pytest.mark.parametrize("error,mkdir_too", [(errno.ENOSPC, False), (errno.EROFS, True),
                                              (errno.EACCES, True)],
                         ids=["full disk", "read-only", "no permission"])
def test_a_failing_disk_is_one_line_for_every_writing_command(
        member, bundle, face_png, tmp_path, command, error, mkdir_too, monkeypatch, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    args = _command(command, disk / "out", member, bundle, face_png, tmp_path)
    _failing_disk(monkeypatch, disk, error, mkdir_too)
    code, _, err = run_cli(args, monkeypatch, capsys)
    line = _last_line_error(code, err)
    assert os.strerror(error) in line and str(disk) in line
    monkeypatch.undo()
    if command != "train-member":  # nothing half-written is left behind
        assert not [p for p in disk.rglob("*") if not p.is_dir()]


@pytest.mark.parametrize("command", WRITING_COMMANDS)
@pytest.mark.parametrize("out", ["long", "dot"])
def test_a_name_too_long_or_the_current_folder_is_one_line(
        member, bundle, face_png, tmp_path, command, out, monkeypatch, capsys):
    if command == "study" and out == "dot":
        pytest.skip("a study's results_dir '.' is legitimate: it writes its own subfolders")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("the user's file")
    target = Path("x" * 300) if out == "long" else Path(".")
    args = _command(command, target, member, bundle, face_png, tmp_path)
    if command == "train-member":
        args[args.index("--name") + 1] = "y" * 300 if out == "long" else "."
    if command == "evaluate" and out == "dot":
        args[args.index("--out") + 1] = "."
    code, _, err = run_cli(args, monkeypatch, capsys)
    line = _last_line_error(code, err)
    if out == "long":
        assert "file systems allow 255" in line or "File name too long" in line
    assert (tmp_path / "notes.txt").read_text() == "the user's file"


# --- the optional data cache -------------------------------------------------------------------

def test_an_unusable_cache_folder_warns_once_and_loads_without_it(tiny_csv, tmp_path,
                                                                  monkeypatch, capsys):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("x")
    monkeypatch.setenv("FERENS_CACHE", str(blocker / "ferens"))
    import ferens.data.fer2013 as data

    monkeypatch.setattr(data, "_CACHE_WARNED", set())
    for _ in range(2):
        assert len(load_fer2013(tiny_csv)) == 70
    err = capsys.readouterr().err
    assert err.count("ferens: warning: cannot write the data cache") == 1, err


def test_a_full_disk_under_the_cache_costs_only_the_cache(tiny_csv, monkeypatch, capsys):
    import ferens.data.fer2013 as data

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(data, "_CACHE_WARNED", set())
    monkeypatch.setattr(np, "savez", full)
    assert len(load_fer2013(tiny_csv)) == 70
    assert "No space left on device" in capsys.readouterr().err
    assert not list(data._cache_dir().glob("*"))


def test_no_home_folder_means_no_cache_not_a_crash(tiny_csv, monkeypatch, capsys):
    import ferens.data.fer2013 as data

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("FERENS_CACHE")
    monkeypatch.setattr(data, "_CACHE_WARNED", set())
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert len(load_fer2013(tiny_csv)) == 70
    assert "no home folder for the data cache" in capsys.readouterr().err


def test_a_truncated_cache_entry_is_rebuilt(tiny_csv, monkeypatch, capsys):
    import ferens.data.fer2013 as data

    expected = load_fer2013(tiny_csv)
    (entry,) = data._cache_dir().glob("fer2013-*.npz")
    entry.write_bytes(entry.read_bytes()[:200])  # a kill or a full disk mid-write
    monkeypatch.setattr(data, "_CACHE_WARNED", set())
    again = load_fer2013(tiny_csv)
    assert np.array_equal(again.images, expected.images)
    assert "damaged data cache entry" in capsys.readouterr().err
    np.load(entry)["images"]  # rebuilt: a whole entry again
    load_fer2013(tiny_csv)
    assert capsys.readouterr().err == ""


def test_training_goes_on_when_the_cache_cannot_be_written(tiny_csv, tmp_path, monkeypatch,
                                                           capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("FERENS_CACHE", str(blocker))
    code, out, err = run_cli(["train-member", "--data", tiny_csv, "--out-dir", tmp_path / "runs",
                              "--name", "m", "--epochs", "1", "--width", "0.25",
                              "--threads", "1", "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    assert "going on without it" in err and "test acc" in out


# --- run folders and predictions that are not what they claim ---------------------------------

def _edit_json(path: Path, text: bytes) -> None:
    path.write_bytes(text)


def _edit_npz(path: Path, **changes) -> None:
    arrays = dict(np.load(path))
    for key, change in changes.items():
        arrays[key] = change(arrays[key])
    np.savez(path, **arrays)


DAMAGED_RUNS = {
    "config.json is a list": (lambda r: _edit_json(r / "config.json", b"[1, 2]"),
                              "config.json: expected a JSON object"),
    "summary.json is null": (lambda r: _edit_json(r / "summary.json", b"null"),
                             "summary.json: expected a JSON object"),
    "summary.json is not UTF-8": (lambda r: _edit_json(r / "summary.json", b'{"name": "\xff"}'),
                                  "summary.json: not UTF-8"),
    "config.json nested too deeply": (
        lambda r: _edit_json(r / "config.json", b"[" * 100_000 + b"]" * 100_000),
        "config.json: JSON nested too deeply"),
    "a summary field of the wrong type": (
        lambda r: _edit_json(r / "summary.json", b'{"train_minutes": "soon"}'),
        "train_minutes='soon'"),
    "string logits": (lambda r: _edit_npz(r / "predictions" / "test.npz",
                                          logits=lambda a: a.astype(str)),
                      "test.npz: logits are"),
    "2-D labels": (lambda r: _edit_npz(r / "predictions" / "val.npz",
                                       labels=lambda a: np.stack([a, a], axis=1)),
                   "val.npz: labels have shape"),
    "a NaN label": (lambda r: _edit_npz(
        r / "predictions" / "test.npz",
        labels=lambda a: np.where(np.arange(len(a)) == 3, np.nan, a)),
        "test.npz: label nan at position 3"),
}


@pytest.mark.parametrize("damage", list(DAMAGED_RUNS))
@pytest.mark.parametrize("command", ["ensemble", "adjust", "report"])
def test_a_damaged_run_folder_is_one_line(tmp_path, damage, command, monkeypatch, capsys):
    runs = complementary_members(tmp_path / "m")
    edit, message = DAMAGED_RUNS[damage]
    edit(runs[1])
    args = {"ensemble": ["ensemble", *runs], "adjust": ["adjust", runs[1]],
            "report": ["report", *runs]}[command]
    code, _, err = run_cli([*args, "--out", tmp_path / "out"], monkeypatch, capsys)
    assert message in _last_line_error(code, err)
    assert not (tmp_path / "out").exists()


# --- bad values, caught where the config and the options are checked ----------------------------

@pytest.mark.parametrize("args,message", [
    (["--model", "resnetv2_50", "--width", "0.5"], "unknown model 'resnetv2_50'"),
    (["--set", "data=a\u0000b"], "contains a NUL character"),
    (["--set", 'augment_override={"transform": {"__class_fullname__": "HorizontalFlip", '
               '"p": "often"}}'], "augment_override is not an albumentations pipeline"),
    (["--set", 'augment_override={"transform": {"__class_fullname__": "RandomCrop", '
               '"height": 60, "width": 60, "p": 1}}'], "augment_override fails on a 48x48 face"),
    (["--set", 'augment_override={"transform": {"__class_fullname__": "Resize", '
               '"height": 20, "width": 20, "p": 1}}'], "augment_override turns a 48x48 face"),
])
def test_a_bad_member_setting_is_one_line_before_anything_is_written(
        tiny_csv, tmp_path, args, message, monkeypatch, capsys):
    code, _, err = run_cli(["train-member", "--data", tiny_csv, "--out-dir", tmp_path / "runs",
                            "--name", "m", "--epochs", "1", "--quiet", *args],
                           monkeypatch, capsys)
    assert message in _last_line_error(code, err)
    assert not (tmp_path / "runs").exists()


def test_a_study_member_timm_cannot_build_is_one_line_before_any_member_starts(
        tiny_csv, tmp_path, monkeypatch, capsys):
    """The model check needs timm, so TrainConfig leaves it to ferens.train.member.check_trainable:
    a training study runs it for every member before starting any (reading one never does)."""
    study = tmp_path / "study.toml"
    study.write_text(f'[study]\nresults_dir = "{tmp_path / "results"}"\n'
                     f'[defaults]\nout_dir = "{tmp_path / "runs"}"\ndata = "{tiny_csv}"\n'
                     'epochs = 1\nwidth = 0.25\n[[members]]\nname = "ok"\n'
                     '[[members]]\nname = "bad"\nmodel = "resnetv2_50"\n')
    code, _, err = run_cli(["study", study], monkeypatch, capsys)
    assert "member 1: unknown model 'resnetv2_50'" in _last_line_error(code, err)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_a_corrected_augment_override_is_not_refused_as_already_existing(
        tiny_csv, tmp_path, monkeypatch, capsys):
    common = ["train-member", "--data", tiny_csv, "--out-dir", tmp_path / "runs", "--name", "m",
              "--epochs", "1", "--width", "0.25", "--threads", "1", "--quiet", "--set"]
    flip = '{"transform": {"__class_fullname__": "HorizontalFlip", "p": %s}}'
    code, _, err = run_cli([*common, "augment_override=" + flip % '"often"'], monkeypatch,
                           capsys)
    _last_line_error(code, err)
    code, _, err = run_cli([*common, "augment_override=" + flip % "0.5"], monkeypatch, capsys)
    assert code == 0, err


@pytest.mark.parametrize("content,suffix,message", [
    (b"[1, 2]", ".json", "a config must be a JSON object"),
    (b'[member]\nname = "caf\xe9"\n', ".toml", "line 2: byte 0xe9 is not UTF-8"),
    (b'member = [1]', ".toml", "a config must be"),
])
def test_a_config_file_of_the_wrong_shape_or_encoding_is_one_line(
        tmp_path, content, suffix, message, monkeypatch, capsys):
    config = tmp_path / f"member{suffix}"
    config.write_bytes(content)
    code, _, err = run_cli(["train-member", "--config", config], monkeypatch, capsys)
    assert message in _last_line_error(code, err)


@pytest.mark.parametrize("where", ["defaults", "study"])
def test_a_nul_in_a_study_path_is_one_line(tmp_path, where, monkeypatch, capsys):
    study = tmp_path / "study.toml"
    key = "out_dir" if where == "defaults" else "results_dir"
    study.write_text(f'[{where}]\n{key} = "runs\\u0000x"\n[[members]]\nname = "m"\n')
    code, _, err = run_cli(["study", study, "--no-train"], monkeypatch, capsys)
    assert "'runs\\x00x'" in _last_line_error(code, err)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize("threads", ["-1", "100000"])
def test_a_bad_thread_count_is_one_line(bundle, face_png, member, tmp_path, command, threads,
                                        monkeypatch, capsys):
    args = (_predict(bundle, face_png, tmp_path / "out") if command == "predict"
            else ["evaluate", "--model", bundle, "--data", _data_of(member)])
    code, _, err = run_cli([*args, "--threads", threads], monkeypatch, capsys)
    assert f"--threads {threads}" in _last_line_error(code, err)


@pytest.mark.parametrize("flag,value", [("--every", "0"), ("--fps", "nan"), ("--fps", "-2"),
                                        ("--backend", "tflite")])
def test_video_and_backend_options_are_checked_even_without_a_video(
        bundle, face_png, tmp_path, flag, value, monkeypatch, capsys):
    code, _, err = run_cli(_predict(bundle, face_png, tmp_path / "out", flag, value),
                           monkeypatch, capsys)
    assert value in _last_line_error(code, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_an_ensemble_seed_out_of_range_is_one_line(tmp_path, seed, monkeypatch, capsys):
    runs = complementary_members(tmp_path / "m")
    code, _, err = run_cli(["ensemble", *runs, "--method", "stack", "--seed", seed, "--out",
                            tmp_path / "e"], monkeypatch, capsys)
    assert f"--seed {seed}" in _last_line_error(code, err)


@pytest.mark.parametrize("loss", ["nan", "-1", "1.5", "inf"])
def test_an_accuracy_budget_outside_0_to_1_is_refused(tmp_path, loss, monkeypatch, capsys):
    runs = complementary_members(tmp_path / "m")
    code, _, err = run_cli(["adjust", runs[0], "--out", tmp_path / "a", "--select",
                            "accuracy-budget", "--max-accuracy-loss", loss], monkeypatch, capsys)
    assert "--max-accuracy-loss" in _last_line_error(code, err)
    assert not (tmp_path / "a").exists()


def test_an_architecture_that_refuses_the_width_is_one_line():
    from ferens.models.factory import create_member_model

    with pytest.raises(FerensError, match="resnet50_gn.*cannot be built with width=0.25"):
        create_member_model("resnet50_gn", width=0.25)


# --- what the newcomer reads ------------------------------------------------------------------

@pytest.mark.parametrize("command,expected", [
    ("train-member", ["Parent folder of runs [runs].", "timm ResNet name [resnet18].",
                      "torch.compile the model [off]."]),
    ("predict", ["[the model shipped with ferens]", "frames sampled per second [5]."]),
    ("evaluate", ["[the model shipped with ferens]", "image folder [../shared/...]."]),
    ("study", ["[cores // lanes]", "[a new local Ray]"]),
])
def test_help_texts_keep_their_bracketed_defaults(command, expected):
    from typer.testing import CliRunner

    from ferens.cli import app

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for snippet in expected:
        assert snippet in text, text


def test_a_member_without_a_name_says_which_name_it_got_and_why(tiny_csv, tmp_path,
                                                                 monkeypatch, capsys):
    args = ["train-member", "--data", tiny_csv, "--out-dir", tmp_path / "runs", "--epochs", "1",
            "--width", "0.25", "--threads", "1", "--quiet"]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert "run name 'member' (ferens' default, as no --name was given)" in err
    code, _, err = run_cli(args, monkeypatch, capsys)
    line = _last_line_error(code, err)
    assert "already exists (name 'member': ferens' default, as no --name was given)" in line
    config = tmp_path / "ablation-none.toml"
    config.write_text("[member]\nepochs = 1\n")
    code, _, err = run_cli([*args, "--config", config], monkeypatch, capsys)
    assert code == 0, err
    assert "run name 'ablation-none' (taken from the file name of --config" in err
    assert (tmp_path / "runs" / "ablation-none" / "summary.json").is_file()


def test_training_says_the_rows_per_split_and_what_follows_the_last_epoch(
        tiny_csv, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["train-member", "--data", tiny_csv, "--out-dir", tmp_path / "runs",
                            "--name", "m", "--epochs", "1", "--width", "0.25", "--threads", "1"],
                           monkeypatch, capsys)
    assert code == 0, err
    assert "train 42 rows, val 14 rows, test 14 rows" in err
    assert "training done: predicting val, test and train with the best epoch (1" in err
    assert err.index("epoch 1:") < err.index("training done")


def test_evaluate_shows_progress(bundle, member, monkeypatch, capsys):
    code, out, err = run_cli(["evaluate", "--model", bundle, "--data", _data_of(member)],
                             monkeypatch, capsys)
    assert code == 0, err
    assert "evaluate: 14 test faces from" in err and "evaluate: 14/14 faces (100%)" in err
    code, out, err = run_cli(["evaluate", "--model", bundle, "--data", _data_of(member),
                              "--quiet"], monkeypatch, capsys)
    assert code == 0 and err == ""


def test_reports_name_runs_that_share_a_folder_name_by_their_parents(tmp_path):
    from ferens.combine.adjust import adjust_run
    from ferens.combine.ensemble import build_ensemble
    from ferens.report.build import write_report

    a, b, c = complementary_members(tmp_path / "members")
    shutil.move(a, tmp_path / "members" / "stack")
    members = [tmp_path / "members" / "stack", b, c]
    build_ensemble(members, method="stack", out=tmp_path / "ensembles" / "stack")
    adjust_run(tmp_path / "ensembles" / "stack", tmp_path / "adjusted" / "stack", tau=0.5)
    # the member's own summary and config call it "a": name it by its folder as a user does
    for name in ("config.json", "summary.json"):
        path = tmp_path / "members" / "stack" / name
        path.write_text(json.dumps(json.loads(path.read_text()) | {"name": "stack"}))
    metrics = write_report([*members, tmp_path / "ensembles" / "stack",
                            tmp_path / "adjusted" / "stack"], out=tmp_path / "report",
                           n_boot=20, show=["stack"])
    names = {r["name"] for r in metrics["runs"]}
    assert {"members/stack", "ensembles/stack", "adjusted/stack"} <= names
    assert not any("#" in n for n in names)
    assert "Run: ensembles/stack" in (tmp_path / "report" / "report.md").read_text()


def _image_folder(root: Path, layout: str) -> Path:
    """The tiny dataset as PNGs: Kaggle-prefixed files under train/ and test/, or unprefixed
    files under train/ and test/ only."""
    ds = load_fer2013(write_fer_csv(root / "src.csv",
                                    fer_rows({"Training": 6, "PublicTest": 2, "PrivateTest": 2})))
    names = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    for i, (image, label, usage) in enumerate(zip(ds.images, ds.labels, ds.usage, strict=True)):
        top = "train" if usage == "Training" else "test"
        name = f"{usage}_{i}.png" if layout == "prefixed" else f"face{i}.png"
        folder = root / "faces" / top / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), image)
    return root / "faces"


def test_an_image_folder_without_a_val_split_explains_the_layout(tmp_path, monkeypatch,
                                                                 capsys):
    faces = _image_folder(tmp_path, "plain")
    code, _, err = run_cli(["train-member", "--data", faces, "--out-dir", tmp_path / "runs",
                            "--name", "m", "--quiet"], monkeypatch, capsys)
    line = _last_line_error(code, err)
    assert "split val (PublicTest) is empty" in line
    assert "val/<class>/" in line and "PublicTest_" in line


def test_image_folder_errors_are_named_by_their_files_in_reports(tmp_path, monkeypatch, capsys):
    faces = _image_folder(tmp_path, "prefixed")
    for name in ("m1", "m2"):
        code, _, err = run_cli(["train-member", "--data", faces, "--out-dir", tmp_path / "runs",
                                "--name", name, "--epochs", "1", "--width", "0.25",
                                "--threads", "1", "--quiet", "--seed", str(len(name))],
                               monkeypatch, capsys)
        assert code == 0, err
    runs = [tmp_path / "runs" / "m1", tmp_path / "runs" / "m2"]
    code, _, err = run_cli(["ensemble", *runs, "--out", tmp_path / "ens"], monkeypatch, capsys)
    assert code == 0, err
    from ferens.report.build import write_report

    metrics = write_report([*runs, tmp_path / "ens"], out=tmp_path / "report", n_boot=20)
    errors = metrics["runs"][0]["confident_errors"]
    assert errors and all(e["file"].startswith("test/") and e["file"].endswith(".png")
                          for e in errors)
    assert all(Path(faces / e["file"]).is_file() for r in metrics["runs"]
               for e in r["confident_errors"])
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| file |" in markdown and "PrivateTest_" in markdown


def test_gitignore_covers_the_readme_outputs():
    ignored = (Path(__file__).parents[1] / ".gitignore").read_text().split()
    assert {"/predictions/", "/adjusted/"} <= set(ignored)
