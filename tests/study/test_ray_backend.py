"""`ferens study --backend ray`: members as Ray tasks on a local Ray (2 CPUs, tiny data)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import fer_rows, run_cli, write_fer_csv

from ferens.config import TrainConfig
from ferens.errors import FerensError
from ferens.study.pipeline import run_study
from ferens.study.ray_backend import load_ray_settings, member_resources, task_config

SPLITS = ("val", "test", "train")


def _study_file(tmp_path: Path, data: Path, members: str, name: str = "study",
                ray_table: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
[study]
results_dir = "{tmp_path / name / 'results'}"
ensemble_methods = ["mean"]
{ray_table}
[defaults]
data = "{data}"
out_dir = "{tmp_path / name / 'runs'}"
width = 0.25
epochs = 1
batch_size = 16
{members}""")
    return path


def _members(path: Path) -> Path:
    return path.parent / path.stem / "results" / "members"


def _predictions(member: Path) -> dict[str, np.ndarray]:
    return {split: np.load(member / "predictions" / f"{split}.npz")["logits"] for split in SPLITS}


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray for the module; its workers get their own data cache."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERENS_CACHE", str(tmp_path_factory.mktemp("ray-cache")))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()


def test_without_ray_the_ray_backend_is_one_line_on_how_to_install_it(tmp_path, tiny_csv,
                                                                      monkeypatch, capsys):
    path = _study_file(tmp_path, tiny_csv, '[[members]]\nname = "a"\n')
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    code, _, err = run_cli(["study", path, "--backend", "ray"], monkeypatch, capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        "ferens: error: --backend ray needs Ray, an optional extra: pip install 'ferens[ray]'"]
    assert not (tmp_path / "study" / "runs").exists()


def test_backend_options_and_ray_settings_errors_name_the_problem(tmp_path, tiny_csv,
                                                                  monkeypatch, capsys):
    path = _study_file(tmp_path, tiny_csv, '[[members]]\nname = "a"\n')
    code, _, err = run_cli(["study", path, "--backend", "slurm"], monkeypatch, capsys)
    assert code == 2 and "--backend 'slurm': expected one of ['local', 'ray']" in err
    code, _, err = run_cli(["study", path, "--address", "auto"], monkeypatch, capsys)
    assert code == 2 and "--address names a Ray cluster; it needs --backend ray" in err
    code, _, err = run_cli(["study", path, "--backend", "ray", "--lanes", "2"], monkeypatch,
                           capsys)
    assert code == 2 and "--lanes is for the local backend" in err
    assert load_ray_settings(path).max_retries == 3
    for table, message in [("max_retries = -1", r"max_retries=-1: expected an integer >= 0"),
                           ("retries = 2", r"unknown \[ray\] key\(s\) \['retries'\]"),
                           ("checkpoint_root = 3", r"checkpoint_root=3: expected a folder")]:
        bad = _study_file(tmp_path, tiny_csv, '[[members]]\nname = "a"\n', name="bad",
                          ray_table=f"[ray]\n{table}\n")
        with pytest.raises(FerensError, match=message):
            load_ray_settings(bad)


def test_a_member_declares_its_threads_and_loader_workers_as_cpus_and_a_gpu_for_cuda():
    cpu = TrainConfig(name="a", threads=2, workers=1, device="cpu")
    assert member_resources(cpu, cluster_gpus=4) == {"num_cpus": 3, "num_gpus": 0}
    cuda = TrainConfig(name="a", threads=1, workers=7, device="cuda")
    assert member_resources(cuda, cluster_gpus=1) == {"num_cpus": 8, "num_gpus": 1}
    auto = TrainConfig(name="a", threads=1, device="auto")
    assert member_resources(auto, cluster_gpus=0)["num_gpus"] == 0
    assert member_resources(auto, cluster_gpus=2)["num_gpus"] == 1
    # a thread count is always concrete: --threads, else the member's own, else one
    # a CUDA member that names no loader workers gets the local backend's share of the node,
    # unless it augments on the GPU; CPU members and members that name theirs keep them
    node = (16, 1)
    assert task_config(TrainConfig(name="a", device="cuda"), None, None, node).workers == 8
    assert task_config(TrainConfig(name="a", device="cuda"), None, None, (16, 4)).workers == 2
    assert task_config(TrainConfig(name="a", device="cuda", augment="torch-strong"), None, None,
                       node).workers == 0
    assert task_config(TrainConfig(name="a", device="cpu"), None, None, node).workers == 0
    assert task_config(TrainConfig(name="a", device="cuda", workers=3), None, None,
                       node).workers == 3
    assert task_config(TrainConfig(name="a"), None, None).threads == 1
    assert task_config(TrainConfig(name="a", threads=3), None, None).threads == 3
    assert task_config(TrainConfig(name="a", threads=3), 2, None).threads == 2
    moved = task_config(TrainConfig(name="a", out_dir="runs"), None, "/scratch/ferens")
    assert moved.run_dir == Path("/scratch/ferens/a")


@pytest.mark.slow
def test_ray_gives_the_same_member_predictions_as_the_local_backend(local_ray, tmp_path,
                                                                    tiny_csv):
    members = ('[[members]]\nname = "a"\nimbalance = "none"\n'
               '[[members]]\nname = "b"\nimbalance = "focal"\nseed = 1\n')
    local = _study_file(tmp_path, tiny_csv, members, name="local")
    on_ray = _study_file(tmp_path, tiny_csv, members, name="ray")
    assert run_study(local, lanes=2, threads=1)["failed"] == []
    outcome = run_study(on_ray, backend="ray")
    assert outcome["failed"] == []
    assert local_ray.is_initialized()  # the backend used the Ray it found and left it running
    for name in ("a", "b"):
        expected, got = _members(local) / name, _members(on_ray) / name
        assert sorted(p.name for p in got.rglob("*")) == sorted(p.name for p in expected.rglob("*"))
        for split, logits in _predictions(expected).items():
            np.testing.assert_array_equal(_predictions(got)[split], logits, err_msg=split)
        configs = [json.loads((m / "config.json").read_text()) for m in (expected, got)]
        assert {k: v for k, v in configs[0].items() if k != "out_dir"} == {
            k: v for k, v in configs[1].items() if k != "out_dir"}
    # ensembles and the report ran on the driver, over the members Ray trained
    assert outcome["ensembles"] == [str(on_ray.parent / "ray" / "results" / "ensembles" / "mean")]
    assert (on_ray.parent / "ray" / "results" / "report" / "report.html").is_file()


def _descendants(root: int) -> list[int]:
    """Process ids below ``root`` (this test's own Ray processes), from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _kill_member_worker_after_first_epoch(run_dir: Path, task: str, record: dict) -> None:
    """SIGKILL the Ray worker training ``task`` once its first epoch is checkpointed."""
    latest, deadline = run_dir / "checkpoint" / "latest.json", time.time() + 1200
    while time.time() < deadline and not latest.is_file():
        time.sleep(0.01)
    for pid in _descendants(os.getpid()):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(f"ray::{task}".encode()):
            os.kill(pid, signal.SIGKILL)
            record["killed_after_epoch"] = json.loads(latest.read_text())["epoch"]
            record["finished_before_kill"] = (run_dir / "summary.json").exists()
            return


@pytest.mark.slow
def test_a_worker_killed_mid_member_is_retried_and_resumes_to_the_uninterrupted_result(
        local_ray, tmp_path, capsys):
    from ferens.train.member import train_member

    data = write_fer_csv(tmp_path / "fer.csv",
                         fer_rows({"Training": 40, "PublicTest": 4, "PrivateTest": 4}))
    path = _study_file(tmp_path, data, '[[members]]\nname = "a"\nepochs = 4\n',
                       ray_table="[ray]\nmax_retries = 1\n")
    reference = TrainConfig.from_dict(
        {"name": "a", "data": str(data), "out_dir": str(tmp_path / "uninterrupted"),
         "width": 0.25, "epochs": 4, "batch_size": 16, "threads": 1})
    train_member(reference, show_progress=False)
    record: dict = {}
    killer = threading.Thread(target=_kill_member_worker_after_first_epoch,
                              args=(tmp_path / "study" / "runs" / "a", "ferens-member:a", record))
    killer.start()
    outcome = run_study(path, backend="ray")
    killer.join()
    assert record.get("killed_after_epoch", 0) >= 1 and not record["finished_before_kill"]
    assert outcome["failed"] == []
    resumed = f"(resumed after epoch {record['killed_after_epoch']})"
    assert resumed in capsys.readouterr().err
    got = _predictions(_members(path) / "a")
    for split, logits in _predictions(reference.run_dir).items():
        np.testing.assert_array_equal(got[split], logits, err_msg=split)
    metrics = (_members(path) / "a" / "metrics.csv").read_text().splitlines()
    assert len(metrics) == 1 + 4  # header and one row per epoch, none twice


@pytest.mark.slow
def test_a_member_whose_worker_dies_more_than_max_retries_times_is_reported(local_ray, tmp_path,
                                                                             capsys):
    data = write_fer_csv(tmp_path / "fer.csv",
                         fer_rows({"Training": 40, "PublicTest": 4, "PrivateTest": 4}))
    path = _study_file(tmp_path, data, '[[members]]\nname = "a"\nepochs = 4\n'
                                       '[[members]]\nname = "b"\n',
                       ray_table="[ray]\nmax_retries = 0\n")
    record: dict = {}
    killer = threading.Thread(target=_kill_member_worker_after_first_epoch,
                              args=(tmp_path / "study" / "runs" / "a", "ferens-member:a", record))
    killer.start()
    outcome = run_study(path, backend="ray")
    killer.join()
    assert not record["finished_before_kill"]
    assert outcome["failed"] == ["a"]
    assert "FAILED a: its worker died on all 1 attempt(s) (WorkerCrashedError" in (
        capsys.readouterr().err)
    assert (_members(path) / "b" / "summary.json").is_file()
    assert not (_members(path) / "a").exists()


@pytest.mark.slow
def test_a_failing_member_is_reported_and_the_other_finishes_with_checkpoints_on_the_worker(
        local_ray, tmp_path, tiny_csv, monkeypatch, capsys):
    worker_disk = tmp_path / "worker-disk"
    path = _study_file(tmp_path, tiny_csv,
                       '[[members]]\nname = "a"\n'
                       f'[[members]]\nname = "b"\ndata = "{tmp_path / "missing.csv"}"\n',
                       ray_table=f'[ray]\ncheckpoint_root = "{worker_disk}"\n')
    outcome = run_study(path, backend="ray")
    assert outcome["failed"] == ["b"]
    err = capsys.readouterr().err
    assert f"FAILED b: FerensError: {tmp_path / 'missing.csv'}" in err
    assert "finished a on " in err
    done = _members(path) / "a"
    assert (done / "summary.json").is_file() and (done / "predictions" / "train.npz").is_file()
    assert not (done / "checkpoint").exists() and not (done / "best.safetensors").exists()
    assert (worker_disk / "a" / "checkpoint" / "latest.json").is_file()
    assert not (tmp_path / "study" / "runs").exists()  # nothing trained under out_dir
    # again through the CLI: the finished member is skipped, the failing one named, exit 2
    stamp = (done / "summary.json").stat().st_mtime_ns
    code, _, err = run_cli(["study", path, "--backend", "ray"], monkeypatch, capsys)
    assert code == 2 and err.splitlines()[-1] == "ferens: error: members failed: ['b']"
    assert "1 finished, 1 to train" in err
    assert (done / "summary.json").stat().st_mtime_ns == stamp
