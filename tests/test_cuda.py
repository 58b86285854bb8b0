"""CUDA checks: run wherever a GPU is present (``pytest -m cuda``), skipped elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import fer_rows, train_interrupted_then_resumed, write_fer_csv

from ferens.config import TrainConfig
from ferens.predictions import load_run

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# bf16 autocast on the GPU vs fp32 on the CPU: probabilities of the same weights agree to this.
CPU_CUDA_PROBABILITY_TOLERANCE = 0.02


@pytest.fixture
def small_csv(tmp_path):
    return write_fer_csv(tmp_path / "fer2013.csv",
                         fer_rows({"Training": 10, "PublicTest": 3, "PrivateTest": 3}))


def _config(data, tmp_path, **overrides) -> TrainConfig:
    values = dict(name="gpu", out_dir=str(tmp_path / "runs"), data=str(data), width=0.25,
                  epochs=3, batch_size=16, threads=1, augment="strong", device="cuda",
                  precision="bf16", workers=2, ema_decay=0.9, cutmix_alpha=1.0)
    return TrainConfig(**(values | overrides))


def test_a_bf16_member_trains_and_resumes_on_cuda(small_csv, tmp_path, monkeypatch):
    from ferens.train import train_member

    straight = _config(small_csv, tmp_path / "a")
    summary = train_member(straight, show_progress=False)
    assert summary["device"] == "cuda" and summary["precision"] == "bf16"
    broken = _config(small_csv, tmp_path / "b")
    train_interrupted_then_resumed(broken, 3, monkeypatch)
    a, b = load_run(straight.run_dir).test.probs, load_run(broken.run_dir).test.probs
    assert np.abs(a - b).max() < CPU_CUDA_PROBABILITY_TOLERANCE  # cuDNN is not bitwise exact


def test_a_cuda_member_bundle_predicts_alike_on_cpu_cuda_and_onnx(small_csv, tmp_path):
    from ferens.bundle import export_bundle, load_bundle
    from ferens.data import load_fer2013
    from ferens.train import train_member

    cfg = _config(small_csv, tmp_path, epochs=1)
    train_member(cfg, show_progress=False)
    bundle = export_bundle(cfg.run_dir, tmp_path / "b.ferens", onnx=True)
    faces = load_fer2013(small_csv).split("test").images
    cpu = load_bundle(bundle, torch.device("cpu")).predict_proba(faces)
    gpu = load_bundle(bundle, torch.device("cuda")).predict_proba(faces)
    onnx = load_bundle(bundle, torch.device("cpu")).predict_proba(faces, backend="onnx")
    assert np.abs(cpu - gpu).max() < CPU_CUDA_PROBABILITY_TOLERANCE
    assert np.abs(cpu - onnx).max() < 1e-4
