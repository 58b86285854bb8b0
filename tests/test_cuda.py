"""CUDA checks: run wherever a GPU is present (``pytest -m cuda``), skipped elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import fer_rows, train_interrupted_then_resumed, write_fer_csv

from ferens.config import TrainConfig
from ferens.runs import load_run

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# bf16 autocast on the GPU vs fp32 on the CPU: probabilities of the same weights agree to this.
CPU_CUDA_PROBABILITY_TOLERANCE = 0.02


@pytest.fixture
def small_csv(tmp_path):
    return write_fer_csv(tmp_path / "fer2013.csv",
                         fer_rows({"Training": 10, "PublicTest": 3, "PrivateTest": 3}))


def _config(data, tmp_path, **overrides) -> TrainConfig:
    """The GPU study's recipe in small: the torch recipe on the device, crops, bf16, mixing."""
    values = dict(name="gpu", out_dir=str(tmp_path / "runs"), data=str(data), width=0.25,
                  stem="s2", epochs=3, batch_size=16, threads=1, augment="torch-strong",
                  crop_size=44, tta="tencrop", select_tta="flip", device="cuda",
                  precision="bf16", cutmix_alpha=1.0)
    return TrainConfig(**(values | overrides))


def test_a_bf16_member_trains_and_resumes_on_cuda(small_csv, tmp_path, monkeypatch):
    from ferens.train.member import train_member

    monkeypatch.setenv("FERENS_CHECKPOINT_SECONDS", "0")  # every epoch, so it truly resumes
    straight = _config(small_csv, tmp_path / "a")
    summary = train_member(straight, show_progress=False)
    assert summary["device"] == "cuda" and summary["precision"] == "bf16"
    broken = _config(small_csv, tmp_path / "b")
    train_interrupted_then_resumed(broken, 3, monkeypatch)
    a, b = load_run(straight.run_dir).test.probs, load_run(broken.run_dir).test.probs
    assert np.abs(a - b).max() < CPU_CUDA_PROBABILITY_TOLERANCE  # cuDNN is not bitwise exact


def test_a_cuda_member_bundle_predicts_alike_on_cpu_cuda_and_onnx(small_csv, tmp_path):
    from ferens.data.fer2013 import load_fer2013
    from ferens.deploy.bundle import load_bundle
    from ferens.deploy.export import export_bundle
    from ferens.train.member import train_member

    cfg = _config(small_csv, tmp_path, epochs=1)
    train_member(cfg, show_progress=False)
    bundle = export_bundle(cfg.run_dir, tmp_path / "b.ferens", onnx=True)
    faces = load_fer2013(small_csv).split("test").images
    cpu = load_bundle(bundle, torch.device("cpu")).predict_proba(faces)
    gpu = load_bundle(bundle, torch.device("cuda")).predict_proba(faces)
    onnx = load_bundle(bundle, torch.device("cpu")).predict_proba(faces, backend="onnx")
    assert np.abs(cpu - gpu).max() < CPU_CUDA_PROBABILITY_TOLERANCE
    assert np.abs(cpu - onnx).max() < 1e-4


def test_the_albumentations_loader_with_workers_and_ema_trains_on_cuda(small_csv, tmp_path):
    pytest.importorskip("albumentations")  # carried only with pack.py --wheels
    from ferens.train.member import train_member

    cfg = _config(small_csv, tmp_path, augment="strong", workers=2, ema_decay=0.9, epochs=2)
    assert train_member(cfg, show_progress=False)["device"] == "cuda"


def test_the_torch_recipe_augments_alike_on_cpu_and_cuda():
    from ferens.data.torch_augment import RECIPES, augment_batch, epoch_parameters

    images = torch.randint(0, 256, (64, 48, 48), dtype=torch.uint8)
    params = torch.from_numpy(epoch_parameters(RECIPES["torch-strong"], np.arange(64), 48, 44))
    cpu = augment_batch(images, params, 44)
    gpu = augment_batch(images.cuda(), params.cuda(), 44).cpu()
    assert (cpu - gpu).abs().max() < 2 / 127.5  # bilinear sampling rounds differently


def _syncs_per_step(cfg, monkeypatch, epochs: int = 1) -> float:
    """Synchronising CUDA calls per training step, counted by torch's sync debug mode."""
    import warnings

    import ferens.train.loop as loop_module
    from ferens.data.fer2013 import load_fer2013
    from ferens.data.loader import make_loader
    from ferens.train.loop import build_parts, train_one_epoch

    monkeypatch.setattr(loop_module, "PROGRESS_EVERY", 10**9)  # the progress read aside
    train = load_fer2013(cfg.data).split("train")
    device = torch.device("cuda")
    parts = build_parts(cfg, train, device)
    loader = make_loader(train.images, train.labels, cfg, device)
    train_one_epoch(parts, loader, cfg, 1, False)  # warm-up: cuDNN, allocator
    steps = len(list(loader.batches))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for epoch in range(2, 2 + epochs):
                train_one_epoch(parts, loader, cfg, epoch, False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    return len(syncs) / (steps * epochs)


def test_a_training_step_never_waits_for_the_gpu(tmp_path, monkeypatch):
    rows = fer_rows({"Training": 40, "PublicTest": 2, "PrivateTest": 2})
    data = write_fer_csv(tmp_path / "fer2013.csv", rows)
    cfg = _config(data, tmp_path, batch_size=32, cutmix_alpha=1.0, mix_prob=0.5)
    # per epoch: the last progress line and the epoch's totals (4 reads), never one per step
    assert _syncs_per_step(cfg, monkeypatch, epochs=2) < 0.75


def test_after_a_resume_adamw_steps_stay_on_the_cpu(small_csv, tmp_path, monkeypatch):
    import ferens.train.member as train_module

    monkeypatch.setenv("FERENS_CHECKPOINT_SECONDS", "0")  # every epoch, so it truly resumes
    cfg = _config(small_csv, tmp_path, epochs=2)
    seen = {}
    real = train_module.finish_run

    def record(run_dir, config, parts, *rest):
        seen["steps"] = {s["step"].device.type for s in parts.optimizer.state.values()}
        seen["moments"] = {s["exp_avg"].device.type for s in parts.optimizer.state.values()}
        return real(run_dir, config, parts, *rest)

    monkeypatch.setattr(train_module, "finish_run", record)
    train_interrupted_then_resumed(cfg, 2, monkeypatch)
    assert seen == {"steps": {"cpu"}, "moments": {"cuda"}}


def test_a_deadline_stops_a_cuda_member_with_its_predictions(small_csv, tmp_path, monkeypatch):
    import time

    import ferens.train.member as train_module

    monkeypatch.setattr(train_module, "finish_seconds", lambda *a: 1e9)
    cfg = _config(small_csv, tmp_path, epochs=5)
    summary = train_module.train_member(cfg, show_progress=False, deadline=time.time() + 3600)
    assert summary["stopped_by_deadline"] and summary["epochs_run"] == 1
    assert (cfg.run_dir / "predictions" / "train.npz").is_file()
    assert (cfg.run_dir / "checkpoint" / "latest.json").is_file()  # resumable
