"""experiments/gpu: the carry parts round-trip a FER2013 CSV byte for byte, and refuse to grow
past what one device call may send."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import fer_rows, write_fer_csv

GPU_DIR = Path(__file__).resolve().parents[1] / "experiments" / "gpu"
sys.path.insert(0, str(GPU_DIR))
import kit  # noqa: E402
import pack  # noqa: E402


@pytest.fixture
def repo(tmp_path) -> Path:
    """A scratch git repo that ignores .gpu-carry, with 10 kB of tree."""
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / ".gitignore").write_text("/.gpu-carry/\n")
    (root / "tracked.bin").write_bytes(b"x" * 10_000)
    return root


@pytest.fixture
def sources(tmp_path) -> tuple[Path, Path, Path]:
    rows = fer_rows({"Training": 5, "PublicTest": 2, "PrivateTest": 2}, seed=3)
    rows[0] = (rows[0][0], " ".join(["0"] * 2304), rows[0][2])  # flat images code too
    rows[1] = (rows[1][0], " ".join(["255"] * 2304), rows[1][2])
    csv = write_fer_csv(tmp_path / "fer2013.csv", rows)
    ferplus = tmp_path / "fer2013new.csv"
    ferplus.write_text("Usage,Image name,neutral\n" + "Training,fer0.png,10\n" * 50)
    wheel = tmp_path / "fake-0.1-py3-none-any.whl"
    wheel.write_bytes(b"PK not really a wheel")
    return csv, ferplus, wheel


def test_parts_round_trip_the_csv_byte_for_byte(repo, sources, tmp_path):
    csv, ferplus, wheel = sources
    out = repo / ".gpu-carry"
    sizes = pack.pack(csv, out, parts=2, ferplus=ferplus, wheels=[wheel], repo=repo)
    assert sizes["tree"] == 10_000 + len("/.gpu-carry/\n")  # the carry itself is ignored
    assert (out / "part1" / "wheels" / wheel.name).read_bytes() == wheel.read_bytes()
    dest = tmp_path / "device"
    with pytest.raises(kit.KitError, match="part 2 of 2 is not unpacked"):
        kit.unpack(out / "part1", dest)
        kit.rebuild(dest, dest / "fer2013.csv")
    kit.unpack(out / "part2", dest)
    report = kit.rebuild(dest, dest / "fer2013.csv")  # checks the hashes, via ferens too
    assert report["ferens_verified"] and report["rows"] == 63
    assert (dest / "fer2013.csv").read_bytes() == csv.read_bytes()
    assert (dest / "fer2013new.csv").read_bytes() == ferplus.read_bytes()


def test_a_damaged_part_or_an_oversize_call_is_refused(repo, sources, tmp_path, capsys):
    csv, _, _ = sources
    out = repo / ".gpu-carry"
    pack.pack(csv, out, parts=2, repo=repo)
    chunk = out / "part2" / "images-2.npz"
    data = bytearray(chunk.read_bytes())
    data[-100] ^= 1
    chunk.write_bytes(bytes(data))
    with pytest.raises(kit.KitError, match="sha256 differs"):
        kit.unpack(out / "part2", tmp_path / "device")
    with pytest.raises(SystemExit) as exc:
        pack.pack(csv, out, parts=2, repo=repo, limit=12_000)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "a device call may send; try --parts 3" in err and err.count("\n") == 1


def test_a_carry_folder_that_git_would_send_is_refused(repo, sources, capsys):
    (repo / ".gitignore").write_text("")
    with pytest.raises(SystemExit):
        pack.pack(sources[0], repo / ".gpu-carry", parts=2, repo=repo)
    assert "is not git-ignored" in capsys.readouterr().err


def test_the_codec_is_lossless_on_extreme_images():
    rng = np.random.default_rng(0)
    images = np.stack([rng.integers(0, 256, (48, 48)), np.zeros((48, 48)),
                       np.full((48, 48), 255), np.tile([0, 255], (48, 24)),
                       rng.integers(120, 130, (48, 48))]).astype(np.uint8)
    assert np.array_equal(kit.decode_images(kit.encode_images(images)), images)


def test_a_trial_study_overrides_every_member_in_its_own_folders(tmp_path):
    import tomllib

    source = Path(__file__).resolve().parents[1] / "experiments" / "study_gpu.toml"
    out = kit.derive_study(source, tmp_path / "trial.toml",
                           kit.parse_set(["device=cpu", "epochs=1", "lr=0.5", "tta=flip"]),
                           results_dir="results/study_gpu-trial", out_dir="runs-trial")
    spec, original = tomllib.loads(out.read_text()), tomllib.loads(source.read_text())
    assert spec["study"] == original["study"] | {"results_dir": "results/study_gpu-trial"}
    assert spec["defaults"] == original["defaults"] | {
        "device": "cpu", "epochs": 1, "lr": 0.5, "tta": "flip", "out_dir": "runs-trial"}
    assert [m["name"] for m in spec["members"]] == [m["name"] for m in original["members"]]
    assert all(m["epochs"] == 1 and m["device"] == "cpu" for m in spec["members"])


def _commit(root: Path) -> None:
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-qm", "c"], check=True)


def _status(root: Path) -> str:
    return subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                          capture_output=True, text=True, check=True).stdout


def test_slimming_keeps_only_what_the_study_reads_and_restore_undoes_it(repo, sources, capsys):
    study = repo / "study.toml"
    study.write_text('[study]\nresults_dir = "results/gpu"\n[defaults]\nwidth = 1.0\n'
                     '[[members]]\nname = "a"\nteacher = "results/v2/ensembles/t"\n')
    for name, size in (("results/v2/ensembles/t/predictions/train.npz", 5_000),
                       ("results/v2/members/big/predictions/train.npz", 400_000),
                       ("results/v2/report/report.html", 300_000),
                       ("results/gpu/members/a/summary.json", 10)):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(b"x" * size)
    _commit(repo)
    full = pack.tree_size(repo)
    assert pack.slim_tree_size(repo, study) == full - 700_000  # measured without a change
    assert _status(repo) == ""
    carry = repo / ".gpu-carry"
    state = pack.slim(repo, carry, study)
    assert sorted(state["paths"]) == ["results/v2/members/big/predictions/train.npz",
                                      "results/v2/report/report.html"]
    assert pack.tree_size(repo) == full - 700_000  # untracked, ignored: they stay behind
    assert (repo / "results/v2/report/report.html").stat().st_size == 300_000  # on disk still
    assert pack.slim(repo, carry, study) == state  # idempotent
    assert "DO NOT COMMIT" in capsys.readouterr().out
    # one part here is ~0.3 MB (the codec's frequency tables dominate these few faces): it fits
    # beside the slimmed tree, not beside the 700 kB the slimming left behind
    limit = pack.tree_size(repo) + 400_000
    assert full + 300_000 > limit
    report = pack.pack(sources[0], carry, parts="auto", repo=repo, limit=limit)
    assert report["calls"] == 1  # the slimmed tree leaves room for the data in one call
    assert pack.restore(repo, carry) and _status(repo) == ""
    assert not pack.restore(repo, carry)  # nothing left to restore
    assert pack.tree_size(repo) == full


def test_slimming_refuses_staged_results_changes(repo, capsys):
    (repo / "results").mkdir()
    (repo / "results" / "x.json").write_text("{}")
    _commit(repo)
    (repo / "results" / "x.json").write_text('{"a": 1}')
    subprocess.run(["git", "-C", str(repo), "add", "results/x.json"], check=True)
    with pytest.raises(SystemExit):
        pack.slim(repo, repo / ".gpu-carry", GPU_DIR.parent / "study_gpu.toml")
    assert "changes under results/ are staged" in capsys.readouterr().err
    assert not (repo / ".gpu-carry" / pack.SLIM_STATE).exists()


def test_the_committed_tree_slimmed_and_the_coded_data_fit_one_device_call():
    """Measured here without changing the index: what every call sends once slimmed, plus
    FER2013's part1 (51.20 MiB: images, labels, usage, FER+ votes; measured by pack.py on the
    real file, experiments/gpu/README.md)."""
    coded_fer2013 = 51.20 * pack.MIB
    tree = pack.slim_tree_size(ROOT, GPU_DIR.parent / "study_gpu.toml")
    assert tree + coded_fer2013 <= pack.CALL_LIMIT, f"slimmed tree {tree / pack.MIB:.1f} MiB"


def test_ensure_unpacks_once_and_a_warm_machine_skips_it(repo, sources, tmp_path):
    csv, _, _ = sources
    carry = repo / ".gpu-carry"
    pack.pack(csv, carry, parts=1, repo=repo)
    dest = tmp_path / "device"
    first = kit.ensure(carry, dest, dest / "fer2013.csv", check_ferens=False)
    assert first["state"] == "verified"
    assert kit.ensure(carry, dest, dest / "fer2013.csv")["state"] == "already"
    assert kit.ensure(tmp_path / "nothing", dest, dest / "fer2013.csv")["state"] == "already"
    (dest / "fer2013.csv").write_text("emotion,pixels,Usage\n")  # damaged since
    assert kit.ensure(carry, dest, dest / "fer2013.csv", check_ferens=False)["state"] == "verified"
    with pytest.raises(kit.KitError, match="no part carried and no verified data"):
        kit.ensure(tmp_path / "nothing", tmp_path / "fresh", tmp_path / "fresh" / "f.csv")


def test_a_trial_replaces_a_key_only_where_the_study_sets_it(tmp_path):
    import tomllib

    source = GPU_DIR.parent / "study_gpu.toml"
    out = kit.derive_study(source, tmp_path / "t.toml", {"epochs": 1},
                           replace={"teacher": "elsewhere", "cutmix_alpha": 0.5})
    members = {m["name"]: m for m in tomllib.loads(out.read_text())["members"]}
    assert members["gpu-r18-s2-c44-distill"]["teacher"] == "elsewhere"
    assert "teacher" not in members["gpu-r18-s2-c44"]
    assert members["gpu-r18-s2-c44-mix"]["cutmix_alpha"] == 0.5
    assert "cutmix_alpha" not in members["gpu-r34-s2-c44"]


def _costs(epochs: int, epoch: float) -> dict:
    return {"epochs": epochs, "epoch_seconds": epoch, "val_seconds": 1.0, "build_seconds": 2.0,
            "checkpoint_seconds": 1.0, "finish_seconds": 5.0, "checkpoint_interval": 120.0}


def test_timing_chooses_in_priority_order_what_fits_and_always_the_first():
    import timing

    members = {"a": _costs(10, 9.0), "b": _costs(10, 30.0), "c": _costs(10, 4.0),
               "d": {"error": "needs albumentations (not installed here)"}}
    plan = {"process_startup_seconds": 5.0, "startup_seconds": 6.0, "members": members}
    for m in members.values():
        if "error" not in m:
            m["estimate_seconds"] = timing.estimate_seconds(m, 6.0)
    assert timing.estimate_seconds(members["a"], 6.0) == 6 + 2 + 10 * 10 + 2 * 1 + 5
    chosen = timing.choose(plan, budget=5 + 115 + 70)
    assert [c["name"] for c in chosen["chosen"]] == ["a", "c"]  # b does not fit, c does
    assert [s["name"] for s in chosen["skipped"]] == ["b", "d"]
    small = timing.choose(plan, budget=5 + 40)  # a cannot finish but one epoch fits: a only
    assert [(c["name"], c["fits"]) for c in small["chosen"]] == [("a", False)]
    assert timing.choose(plan, budget=5 + 10)["chosen"] == []  # not even one epoch


def test_timing_costs_a_stopped_member_for_its_remaining_epochs(tmp_path, monkeypatch):
    import json

    import timing

    study = tmp_path / "s.toml"
    study.write_text(f'[study]\nresults_dir = "{tmp_path / "res"}"\n[defaults]\n'
                     f'out_dir = "{tmp_path / "runs"}"\n[[members]]\nname = "a"\n'
                     '[[members]]\nname = "b"\n')
    monkeypatch.delenv("FERENS_RUNS_DIR", raising=False)
    (tmp_path / "runs" / "a" / "checkpoint").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "checkpoint" / "latest.json").write_text('{"epoch": 8}')
    (tmp_path / "runs" / "a" / "summary.json").write_text('{"stopped_by_deadline": true}')
    (tmp_path / "res" / "members" / "b").mkdir(parents=True)
    (tmp_path / "res" / "members" / "b" / "summary.json").write_text(json.dumps({}))
    members = {"a": _costs(10, 9.0), "b": _costs(10, 9.0)}
    plan = timing.choose({"process_startup_seconds": 0.0, "startup_seconds": 6.0,
                          "members": members}, budget=1000, study_path=study)
    assert plan["chosen"] == [{"name": "a", "estimate_seconds": 6 + 2 + 2 * 10 + 2 + 5,
                               "fits": True, "resumes_after_epoch": 8}]
    assert plan["skipped"] == [{"name": "b", "why": "finished"}]


# ---------------------------------------------------------------------------- the rehearsal

ROOT = Path(__file__).resolve().parents[1]
TEACHER = "results/study_v2/ensembles/teacher-greedy"


def _scratch_project(tmp_path: Path, csv: Path) -> Path:
    """A git repo holding this project's code, the GPU study, a synthetic teacher at the path the
    study names, and bulky committed results that must not travel to the device."""
    import shutil

    from ferens.data.fer2013 import load_fer2013
    from ferens.io import write_json
    from ferens.runs import Predictions, save_predictions

    repo = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__", "weights", "*.pyc")
    shutil.copytree(ROOT / "ferens", repo / "ferens", ignore=ignore)
    shutil.copytree(ROOT / "experiments" / "gpu", repo / "experiments" / "gpu", ignore=ignore)
    shutil.copy2(ROOT / "experiments" / "study_gpu.toml", repo / "experiments")
    (repo / "tests").mkdir()
    for name in ("conftest.py", "test_cuda.py"):
        shutil.copy2(ROOT / "tests" / name, repo / "tests")
    shutil.copy2(ROOT / "pyproject.toml", repo)
    (repo / ".gitignore").write_text("/.gpu-carry/\n__pycache__/\n")
    train = load_fer2013(csv, cache=False).split("train")
    rng = np.random.default_rng(0)
    teacher = repo / TEACHER
    save_predictions(teacher / "predictions" / "train.npz",
                     Predictions(rng.normal(size=(len(train), 7)).astype(np.float32),
                                 train.labels, train.row_ids))
    write_json(teacher / "config.json", {"kind": "ensemble", "name": "teacher-greedy"})
    bulky = repo / "results" / "study_v2" / "members" / "big" / "predictions" / "train.npz"
    bulky.parent.mkdir(parents=True)
    bulky.write_bytes(rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes())
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-qm", "scratch"], check=True)
    return repo


def _what_travels(repo: Path, carry: list[str], dest: Path) -> Path:
    """A copy of what the device tool sends: tracked and untracked-not-ignored files, and the
    carried paths."""
    import shutil

    dest.mkdir()
    for name in pack.travelling_files(repo) + [
            str(p.relative_to(repo)) for c in carry for p in (repo / c).rglob("*")
            if p.is_file()]:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, dest / name)
    return dest


def _import_seconds() -> float:
    """How long a python + torch + ferens start takes on this machine now (it sizes the
    rehearsal's deadlines: two training lanes may be sharing the cores)."""
    import time

    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, ferens.train.member"], check=True,
                   cwd=ROOT)
    return time.perf_counter() - start


def _session_lines(log: str) -> str:
    """session.sh's own lines (stages, reasons) and the end of the log: what a failure needs."""
    own = [line for line in log.splitlines() if line.startswith(("[session", "kit:"))]
    return "\n".join(own) + "\n--- end of the log ---\n" + log[-1500:]


@pytest.mark.slow
def test_the_whole_gpu_sequence_rehearsed_on_the_cpu(tmp_path):
    """pack (slim index, one part) -> what the device tool sends -> session.sh all (env, data,
    CUDA tests, timing, the chosen member stopped by the deadline with its predictions) ->
    session.sh train on the still-warm machine (resumes it) -> the archive back here
    (--import restores the index)."""
    import json
    import os
    import tarfile
    import time

    csv = write_fer_csv(tmp_path / "fer2013.csv",
                        fer_rows({"Training": 12, "PublicTest": 3, "PrivateTest": 3}))
    repo = _scratch_project(tmp_path, csv)
    packed = subprocess.run([sys.executable, "experiments/gpu/pack.py", "--data", str(csv),
                             "--ferplus", str(tmp_path / "none")], cwd=repo,
                            capture_output=True, text=True)
    assert packed.returncode == 0, packed.stderr
    assert "1 device call(s) bring the data" in packed.stdout
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                            text=True).stdout
    assert status.strip() == "D  results/study_v2/members/big/predictions/train.npz"
    device = _what_travels(repo, [".gpu-carry/part1"], tmp_path / "device")
    assert (device / TEACHER / "predictions" / "train.npz").is_file()  # the study reads it
    assert not (device / "results" / "study_v2" / "members").exists()  # the bulk stays here

    unit = _import_seconds()
    # the deadlines scale with this machine's speed (a process start is one unit; the first
    # call starts about ten, timing included), plus a fixed part that a fast idle box still
    # needs: the tests stage leaves FERENS_GPU_TESTS_KEEP for timing and training
    deadline = int(10 * unit + 60)
    out, work = tmp_path / "out", tmp_path / "work"
    env = os.environ | {
        "OUT": str(out), "FERENS_GPU_PY": sys.executable, "FERENS_GPU_WORK": str(work),
        "FERENS_GPU_SET": "device=cpu precision=fp32 width=0.25 epochs=400 batch_size=16",
        "FERENS_GPU_MEMBERS": "gpu-r18-s2-c44 gpu-r18-s2-c44-distill",
        "FERENS_GPU_TIMING_STEPS": "3", "FERENS_GPU_LOADER_WORKERS": "0",
        "FERENS_GPU_DEADLINE": str(deadline), "FERENS_GPU_TESTS_KEEP": "20",
        "FERENS_GPU_RESERVE": str(int(2 * unit + 15)), "OMP_NUM_THREADS": "1"}
    start = time.time()
    first = subprocess.run(["bash", "experiments/gpu/session.sh", "all"], cwd=device, env=env,
                           capture_output=True, text=True)
    log = first.stdout + first.stderr
    assert first.returncode == 0, _session_lines(log)
    assert time.time() - start < deadline + 5  # it ended itself, by its deadline
    assert "env=ok data=ok tests=ok timing=ok train=ok" in log
    assert (out / "session.log").read_text().strip().endswith("exit 0")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["cuda-tests.log", "env.txt", "ferens-gpu-results.tar.gz", "session.log",
                     "timing.json", "timing.md"]
    timing = json.loads((out / "timing.json").read_text())
    chosen = [c["name"] for c in timing["plan"]["chosen"]]
    assert chosen == ["gpu-r18-s2-c44"]  # 400 epochs fit in no budget; the first runs anyway
    costs = timing["members"]["gpu-r18-s2-c44"]
    assert costs["epoch_measured"] and costs["step_seconds"] > 0
    assert costs["step_seconds_sync_each"] > 0 and costs["checkpoint_seconds"] > 0
    with tarfile.open(out / "ferens-gpu-results.tar.gz") as tar:
        archived = tar.getnames()
        member = "results/study_gpu-trial/members/gpu-r18-s2-c44"
        summary = json.load(tar.extractfile(f"{member}/summary.json"))
    assert summary["stopped_by_deadline"] and 1 <= summary["epochs_run"] < 400
    assert {f"{member}/predictions/{s}.npz" for s in ("val", "test", "train")} <= set(archived)
    assert "logs/study.log" in archived and "markers/train.ok" in archived
    assert not [n for n in archived if n.endswith((".safetensors", ".pt"))]

    # the next call, at once, on the warm machine: no data or timing again, the member resumes
    out2 = tmp_path / "out2"
    env |= {"OUT": str(out2), "FERENS_GPU_DEADLINE": str(int(5 * unit + 40))}
    second = subprocess.run(["bash", "experiments/gpu/session.sh", "train"], cwd=device,
                            env=env, capture_output=True, text=True)
    log = second.stdout + second.stderr
    assert second.returncode == 0, _session_lines(log)
    assert "kit: data already" in log and "stage timing" not in log
    with tarfile.open(out2 / "ferens-gpu-results.tar.gz") as tar:
        again = json.load(tar.extractfile(f"{member}/summary.json"))
    assert again["resumes"] == 1 and again["epochs_run"] > summary["epochs_run"]

    # back here: --import restores the index, then copies the results in
    back = subprocess.run([sys.executable, "experiments/gpu/pack.py", "--import",
                           str(out2 / "ferens-gpu-results.tar.gz")], cwd=repo,
                          capture_output=True, text=True)
    assert back.returncode == 0, back.stderr
    assert (repo / member / "predictions" / "train.npz").is_file()
    assert not (repo / ".gpu-carry" / pack.SLIM_STATE).exists()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                            cwd=repo, capture_output=True, text=True).stdout
    assert status == ""  # the index is as committed again


# ---------------------------------------------------------------------------- failing stages

FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for the device's python3: the stages' own programs fail or hang on request, the
# rest (reading the study, timing.py choose) runs for real
case "$*" in
  *"kit.py env"*) echo "env: fake"; exit "${FAKE_ENV:-0}" ;;
  *"kit.py ensure"*) echo "kit: fake data"; exit "${FAKE_DATA:-0}" ;;
  *"-m pytest"*) echo "fake CUDA tests"; exit 0 ;;
  *"timing.py measure"*) echo "fake timing"; exit "${FAKE_TIMING:-0}" ;;
  *"ferens.cli study"*) echo "fake study: never ends"; exec sleep 1000 ;;
esac
exec REAL "$@"
"""


def _failing_session(tmp_path: Path, budget: int, **fake: str):
    """session.sh all in a scratch copy of the kit with a fake interpreter; returns
    (exit code, seconds, $OUT, the archive's names; its pieces joined if it was split)."""
    import os
    import shutil
    import tarfile
    import time

    repo = tmp_path / "repo"
    shutil.copytree(GPU_DIR, repo / "experiments" / "gpu",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(GPU_DIR.parent / "study_gpu.toml", repo / "experiments")
    (repo / "ferens").symlink_to(ROOT / "ferens")  # timing.py choose reads ferens.errors
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON.replace("REAL", sys.executable))
    python.chmod(0o755)
    out = tmp_path / "out"
    env = os.environ | {"OUT": str(out), "FERENS_GPU_PY": str(python),
                        "FERENS_GPU_WORK": str(tmp_path / "work"),
                        "FERENS_GPU_DEADLINE": str(budget), "FERENS_GPU_RESERVE": "5"} | fake
    start = time.time()
    done = subprocess.run(["bash", "experiments/gpu/session.sh", "all"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=budget + 60)
    seconds = time.time() - start
    archive = out / "ferens-gpu-results.tar.gz"
    pieces = pack.archive_pieces(archive if archive.is_file() else Path(f"{archive}.0"))
    joined = tmp_path / "joined.tar.gz"
    joined.write_bytes(b"".join(p.read_bytes() for p in pieces))
    with tarfile.open(joined) as tar:
        names = tar.getnames()
    return done.returncode, seconds, out, names


@pytest.mark.parametrize(("fake", "code", "stage"), [({"FAKE_ENV": "3"}, 10, "env"),
                                                    ({"FAKE_DATA": "2"}, 11, "data")])
def test_a_failing_stage_stops_the_session_loudly_and_its_logs_come_back(tmp_path, fake, code,
                                                                         stage):
    rc, _, out, names = _failing_session(tmp_path, 60, **fake)
    log = (out / "session.log").read_text()
    assert rc == code
    assert f"STAGE {stage} FAILED (exit {list(fake.values())[0]}" in log
    assert log.strip().endswith(f"exit {code}") and f"{stage}=FAILED" in log
    assert f"markers/{stage}.failed" in names and "logs" in names
    assert "fake study" not in log and "stage train" not in log  # nothing trains after it


def test_without_timing_the_first_member_trains_and_a_hard_stop_is_never_exit_124(tmp_path):
    """The timing stage fails: its code is kept, and the first member of the study trains
    anyway. The member then hangs past its deadline: the hard stop ends it, the session
    says so and exits 15 by its own deadline (124 would read as the device tool's timeout)."""
    rc, seconds, out, names = _failing_session(tmp_path, 45, FAKE_TIMING="1",
                                               FERENS_GPU_TESTS="0")
    log = (out / "session.log").read_text()
    assert rc == 15, log[-2000:]
    assert seconds < 45 + 5
    assert "fake timing" in log and "STAGE timing FAILED (exit 1" in log
    assert "timing=FAILED" in log
    assert "training the first unfinished member, untimed" in log
    assert "training gpu-r18-s2-c44 from" in log  # the study's first member
    assert "the graceful deadline was missed" in log and log.strip().endswith("exit 15")
    assert "markers/train.failed" in names and "markers/timing.failed" in names


def test_an_archive_past_the_tools_file_limit_comes_back_in_pieces(tmp_path):
    rc, _, out, names = _failing_session(tmp_path, 60, FAKE_ENV="1",
                                         FERENS_GPU_PIECE_BYTES="100")
    assert rc == 10 and "markers/env.failed" in names  # the pieces join into the archive
    back = sorted(p.name for p in out.iterdir())
    assert "ferens-gpu-results.tar.gz" not in back and "ferens-gpu-results.tar.gz.1" in back
    assert all(p.stat().st_size <= 100 for p in out.glob("ferens-gpu-results.tar.gz.*"))
    assert "pack.py --import takes the first" in (out / "session.log").read_text()
    (out / "ferens-gpu-results.tar.gz.0").unlink()
    (out / "ferens-gpu-results.tar.gz.0").write_bytes(b"")
    last = max(out.glob("ferens-gpu-results.tar.gz.*"), key=lambda p: int(p.suffix[1:]))
    last.rename(tmp_path / "elsewhere")  # one piece did not come back
    (out / "ferens-gpu-results.tar.gz.9").write_bytes(b"x")
    with pytest.raises(SystemExit):
        pack.archive_pieces(out / "ferens-gpu-results.tar.gz.0")
