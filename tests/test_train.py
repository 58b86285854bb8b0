from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import run_cli

import ferens.train as train_module
from ferens.config import TrainConfig
from ferens.errors import FerensError
from ferens.inference import predict_logits
from ferens.models import create_member_model
from ferens.predictions import load_run
from ferens.train import train_member


def _config(tiny_csv, tmp_path, **overrides) -> TrainConfig:
    values = dict(name="m", out_dir=str(tmp_path / "runs"), data=str(tiny_csv), width=0.25,
                  epochs=2, batch_size=16, threads=1, augment="light")
    return TrainConfig(**(values | overrides))


def _metric_rows(run_dir):
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")}
            for r in rows]


def test_train_member_writes_the_run_folder_contract(tiny_csv, tmp_path):
    cfg = _config(tiny_csv, tmp_path, imbalance="focal")
    summary = train_member(cfg, show_progress=False)
    run_dir = cfg.run_dir
    for name in ("config.json", "metrics.csv", "best.safetensors", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert TrainConfig.load(run_dir / "config.json") == cfg
    run = load_run(run_dir)
    assert run.test.logits.shape == (14, 7) and run.test.row_ids.tolist() == list(range(56, 70))
    assert len(_metric_rows(run_dir)) == 2
    assert set(summary["test"]["per_class_recall"]) == {"Angry", "Disgust", "Fear", "Happy",
                                                        "Sad", "Surprise", "Neutral"}
    assert summary["images_per_second"] > 0 and summary["train_minutes"] > 0


@pytest.mark.parametrize("imbalance", ["none", "oversample"])
def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_csv, tmp_path,
                                                                monkeypatch, imbalance):
    straight = _config(tiny_csv, tmp_path / "a", epochs=3, imbalance=imbalance)
    train_member(straight, show_progress=False)

    broken = _config(tiny_csv, tmp_path / "b", epochs=3, imbalance=imbalance)
    real_epoch = train_module.train_one_epoch

    def interrupted(*args, **kwargs):
        if args[3] == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_member(broken, show_progress=False)
    assert not (broken.run_dir / "summary.json").exists()
    monkeypatch.setattr(train_module, "train_one_epoch", real_epoch)
    train_member(broken, resume=True, show_progress=False)

    assert _metric_rows(broken.run_dir) == _metric_rows(straight.run_dir)
    a, b = load_run(straight.run_dir), load_run(broken.run_dir)
    assert np.allclose(a.test.logits, b.test.logits, atol=1e-6)


def test_resume_with_a_different_config_says_what_differs(tiny_csv, tmp_path):
    train_member(_config(tiny_csv, tmp_path, epochs=1), show_progress=False)
    with pytest.raises(FerensError, match=r"cannot resume with a different config: lr: 0.002"):
        train_member(_config(tiny_csv, tmp_path, epochs=1, lr=0.01), resume=True)
    with pytest.raises(FerensError, match="already exists; pass --resume"):
        train_member(_config(tiny_csv, tmp_path, epochs=1), show_progress=False)


def test_cli_trains_from_a_toml_config_with_flag_overrides(tiny_csv, tmp_path, monkeypatch,
                                                           capsys):
    toml = tmp_path / "member.toml"
    toml.write_text(f'[member]\nname = "cli"\nwidth = 0.25\nepochs = 3\ndata = "{tiny_csv}"\n'
                    f'out_dir = "{tmp_path / "runs"}"\nthreads = 1\n')
    code, out, err = run_cli(["train-member", "--config", toml, "--epochs", "1",
                              "--set", "label_smoothing=0.1", "--imbalance", "weighted"],
                             monkeypatch, capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / "runs" / "cli" / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["label_smoothing"] == 0.1
    assert saved["imbalance"] == "weighted" and saved["width"] == 0.25
    assert "test acc" in out
    assert "epoch 1/1" in err  # plain progress lines when not on a terminal


def test_unknown_config_key_is_rejected(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["train-member", "--set", "epohcs=3"], monkeypatch, capsys)
    assert code == 2 and "unknown config key(s) ['epohcs']" in err


def test_channels_last_fast_path_gives_the_same_logits_as_the_plain_path():
    torch.manual_seed(0)
    model = create_member_model("resnet18", width=0.5).eval()
    images = np.random.default_rng(0).integers(0, 256, (8, 48, 48), dtype=np.uint8)
    plain = predict_logits(model, images, TrainConfig(channels_last=False, tta="none"),
                           torch.device("cpu"))
    fast = predict_logits(model.to(memory_format=torch.channels_last), images,
                          TrainConfig(channels_last=True, tta="none"), torch.device("cpu"))
    assert np.allclose(plain, fast, atol=1e-4)


def test_flip_and_ten_crop_tta_average_view_probabilities():
    torch.manual_seed(0)
    model = create_member_model("resnet18", width=0.25).eval()
    images = np.random.default_rng(1).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    cpu = torch.device("cpu")
    plain = predict_logits(model, images, TrainConfig(tta="none"), cpu)
    flipped = predict_logits(model, images[:, :, ::-1], TrainConfig(tta="none"), cpu)
    tta = predict_logits(model, images, TrainConfig(tta="flip"), cpu)
    expected = ((torch.tensor(plain).softmax(1) + torch.tensor(flipped).softmax(1)) / 2).log()
    assert np.allclose(tta, expected.numpy(), atol=1e-5)
    ten = predict_logits(model, images, TrainConfig(tta="tencrop", crop_size=40), cpu)
    assert ten.shape == (4, 7) and np.allclose(np.exp(ten).sum(1), 1, atol=1e-5)
    with pytest.raises(FerensError, match="tencrop needs a crop_size"):
        TrainConfig(tta="tencrop")


def test_early_stopping_keeps_the_best_epoch_and_stays_stopped_on_resume(tiny_csv, tmp_path):
    cfg = _config(tiny_csv, tmp_path, epochs=6, patience=1, lr=0.0)
    summary = train_member(cfg, show_progress=False)
    assert summary["stopped_early"] and summary["epochs_run"] == 2
    assert summary["best_epoch"] == 1
    (cfg.run_dir / "summary.json").unlink()
    again = train_member(cfg, resume=True, show_progress=False)
    assert again["epochs_run"] == 2
