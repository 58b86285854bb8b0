from __future__ import annotations

import csv
import json
import math
import time

import numpy as np
import pytest
import torch
from conftest import run_cli, train_interrupted, train_interrupted_then_resumed
from safetensors.torch import load_file

import ferens.train.member as train_module
from ferens.config import TrainConfig
from ferens.errors import FerensError
from ferens.models.factory import create_member_model
from ferens.models.inference import load_member_model, predict_logits, to_tensor, tta_views
from ferens.runs import load_predictions, load_run
from ferens.train.checkpoint import checkpoint_interval
from ferens.train.loop import cosine_with_warmup
from ferens.train.member import load_splits, train_member


def _config(tiny_csv, tmp_path, **overrides) -> TrainConfig:
    values = dict(name="m", out_dir=str(tmp_path / "runs"), data=str(tiny_csv), width=0.25,
                  epochs=2, batch_size=16, threads=1, augment="light")
    return TrainConfig(**(values | overrides))


def _metric_rows(run_dir):
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second", "val_seconds")}
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
    with open(run_dir / "metrics.csv") as fh:  # time spent predicting val, per epoch
        assert all(float(r["val_seconds"]) > 0 for r in csv.DictReader(fh))
    assert summary["val_minutes"] > 0


@pytest.mark.parametrize("imbalance", ["none", "oversample"])
def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_csv, tmp_path,
                                                                monkeypatch, imbalance):
    straight = _config(tiny_csv, tmp_path / "a", epochs=3, imbalance=imbalance)
    train_member(straight, show_progress=False)

    broken = _config(tiny_csv, tmp_path / "b", epochs=3, imbalance=imbalance)
    train_interrupted(broken, 2, monkeypatch)
    assert not (broken.run_dir / "summary.json").exists()
    train_member(broken, resume=True, show_progress=False)

    assert _metric_rows(broken.run_dir) == _metric_rows(straight.run_dir)
    a, b = load_run(straight.run_dir), load_run(broken.run_dir)
    assert np.allclose(a.test.logits, b.test.logits, atol=1e-6)
    # the summary says the run spanned two sessions, and which code ran each
    once, twice = (json.loads((c.run_dir / "summary.json").read_text()) for c in (straight, broken))
    assert (once["resumes"], twice["resumes"]) == (0, 1)
    assert len(once["code_commits"]) == 1 and len(twice["code_commits"]) == 2
    assert twice["versions"]["timm"] and twice["versions"]["torch"]


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


def _scripted_val_scores(monkeypatch, scores: dict[int, float]) -> dict[int, dict]:
    """Replace validation by the given accuracy per epoch; returns the weights evaluated at
    each epoch (filled in as training runs)."""
    weights: dict[int, dict] = {}

    def scripted(parts, split, cfg):
        epoch = len(weights) + 1
        weights[epoch] = {k: v.detach().clone() for k, v in parts.eval_model.state_dict().items()}
        return {"val_loss": 1.0, "val_accuracy": scores[epoch], "val_macro_f1": scores[epoch]}

    monkeypatch.setattr(train_module, "evaluate", scripted)
    return weights


def test_early_stopping_keeps_the_best_epoch_and_stays_stopped_on_resume(tiny_csv, tmp_path,
                                                                         monkeypatch):
    # val peaks at epoch 2; patience 2 stops after epoch 4, before epoch 5's higher score
    weights = _scripted_val_scores(monkeypatch, {1: 0.3, 2: 0.6, 3: 0.5, 4: 0.4, 5: 0.9})
    cfg = _config(tiny_csv, tmp_path, epochs=6, patience=2)
    summary = train_member(cfg, show_progress=False)
    assert summary["stopped_early"] and summary["epochs_run"] == 4 and len(weights) == 4
    assert summary["best_epoch"] == 2
    best = load_file(str(cfg.run_dir / "best.safetensors"))
    assert all(torch.equal(best[k], weights[2][k]) for k in best)
    assert not all(torch.equal(best[k], weights[4][k]) for k in best)  # training moved on
    # the saved predictions are the best epoch's
    model = load_member_model(cfg, cfg.run_dir / "best.safetensors", torch.device("cpu"))
    test = load_run(cfg.run_dir).test
    images = load_splits(cfg)["test"].images
    assert np.allclose(predict_logits(model, images, cfg, torch.device("cpu")), test.logits,
                       atol=1e-5)
    (cfg.run_dir / "summary.json").unlink()
    again = train_member(cfg, resume=True, show_progress=False)
    assert again["epochs_run"] == 4 and again["best_epoch"] == 2 and len(weights) == 4


def test_learning_rate_warms_up_linearly_then_decays_as_a_cosine_to_zero():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    schedule = cosine_with_warmup(optimizer, warmup_steps=4, total_steps=12)
    rates = []
    for _ in range(13):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert np.allclose(rates[:4], [0.5, 1.0, 1.5, 2.0])
    assert np.allclose(rates[4:], [1.0 + math.cos(math.pi * k / 8) for k in range(9)])
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)


def test_training_steps_the_schedule_per_batch_with_warmup_in_epochs(tiny_csv, tmp_path,
                                                                     monkeypatch):
    _scripted_val_scores(monkeypatch, {1: 0.1, 2: 0.2, 3: 0.3})
    cfg = _config(tiny_csv, tmp_path, epochs=3, warmup_epochs=1.0, lr=0.01)
    train_member(cfg, show_progress=False)
    # 42 training faces in batches of 16: 3 steps per epoch, 9 in all, 3 of them warm-up
    rates = [float(r["lr"]) for r in _metric_rows(cfg.run_dir)]
    assert np.allclose(rates, [0.01 / 3, 0.01, 0.005])


def test_ten_crop_views_are_the_centre_and_four_corners_each_mirrored():
    batch = np.arange(2 * 48 * 48, dtype=np.int32).reshape(2, 48, 48)  # every pixel unique
    views = tta_views(batch, TrainConfig(tta="tencrop", crop_size=40), "tencrop")
    crops = [batch[:, y:y + 40, x:x + 40] for y, x in [(4, 4), (0, 0), (0, 8), (8, 0), (8, 8)]]
    expected = crops + [c[:, :, ::-1] for c in crops]
    assert len(views) == 10
    for view in expected:
        assert sum(np.array_equal(view, v) for v in views) == 1


def test_ten_crop_prediction_averages_the_ten_view_probabilities():
    torch.manual_seed(0)
    model = create_member_model("resnet18", width=0.25).eval()
    images = np.random.default_rng(2).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    cfg = TrainConfig(tta="tencrop", crop_size=40)
    cpu = torch.device("cpu")
    with torch.no_grad():
        probs = [model(to_tensor(v, cpu, False)).softmax(1)
                 for v in tta_views(images, cfg, "tencrop")]
    expected = torch.stack(probs).mean(0).log().numpy()
    assert np.allclose(predict_logits(model, images, cfg, cpu), expected, atol=1e-5)


def _stop_after(monkeypatch, epoch: int) -> None:
    """Make the deadline check after ``epoch`` find too little time left (and none before)."""
    calls = []

    def finish_estimate(*args):
        calls.append(1)
        return 1e9 if len(calls) >= epoch else 0.0

    monkeypatch.setattr(train_module, "finish_seconds", finish_estimate)


def test_a_deadline_stops_after_an_epoch_with_predictions_and_resumes_exactly(
        tiny_csv, tmp_path, monkeypatch):
    straight = _config(tiny_csv, tmp_path / "a", epochs=4)
    train_member(straight, show_progress=False)
    stopped = _config(tiny_csv, tmp_path / "b", epochs=4)
    _stop_after(monkeypatch, 2)
    summary = train_member(stopped, show_progress=False, deadline=time.time() + 3600)
    assert summary["stopped_by_deadline"] and summary["epochs_run"] == 2
    assert summary["epochs_planned"] == 4 and not summary["stopped_early"]
    run = load_run(stopped.run_dir)  # val, test and train predictions of the best epoch so far
    assert run.test.logits.shape == (14, 7) and run.val.logits.shape == (14, 7)
    assert len(load_predictions(stopped.run_dir / "predictions" / "train.npz").labels) == 42
    assert len(_metric_rows(stopped.run_dir)) == 2
    monkeypatch.undo()
    again = train_member(stopped, resume=True, show_progress=False)  # trains on, not skipped
    assert not again["stopped_by_deadline"] and again["epochs_run"] == 4
    assert again["resumes"] == 1
    assert _metric_rows(stopped.run_dir) == _metric_rows(straight.run_dir)
    assert np.allclose(load_run(straight.run_dir).test.logits,
                       load_run(stopped.run_dir).test.logits, atol=1e-6)


def test_a_deadline_that_has_passed_or_is_not_a_time_is_one_clear_error(tiny_csv, tmp_path,
                                                                       monkeypatch):
    cfg = _config(tiny_csv, tmp_path, epochs=1)
    with pytest.raises(FerensError, match="deadline .* passed before training started"):
        train_member(cfg, show_progress=False, deadline=time.time() - 1)
    assert not cfg.run_dir.exists()
    monkeypatch.setenv("FERENS_DEADLINE", "tomorrow")
    with pytest.raises(FerensError, match="FERENS_DEADLINE='tomorrow': expected a unix time"):
        train_member(cfg, show_progress=False)


def test_checkpoints_follow_the_interval_and_the_last_epoch_always_checkpoints(
        tiny_csv, tmp_path, monkeypatch):
    assert checkpoint_interval(torch.device("cpu")) == 0.0
    assert checkpoint_interval(torch.device("cuda")) == 120.0
    saved = []
    real = train_module.save_checkpoint
    monkeypatch.setattr(train_module, "save_checkpoint",
                        lambda run_dir, parts, state: (saved.append(state.epoch),
                                                       real(run_dir, parts, state)))
    monkeypatch.setenv("FERENS_CHECKPOINT_SECONDS", "3600")
    cfg = _config(tiny_csv, tmp_path, epochs=3)
    train_member(cfg, show_progress=False)
    assert saved == [3]  # not after epochs 1 and 2
    assert (cfg.run_dir / "best.safetensors").is_file()
    monkeypatch.delenv("FERENS_CHECKPOINT_SECONDS")
    saved.clear()
    train_member(_config(tiny_csv, tmp_path / "every", epochs=3), show_progress=False)
    assert saved == [1, 2, 3]  # on the CPU, every epoch


def test_the_best_weights_are_the_best_epochs_when_checkpoints_are_sparse(
        tiny_csv, tmp_path, monkeypatch):
    """Between checkpoints the best epoch's weights wait in memory: they must be a copy, not
    the live (CPU) parameters that later epochs keep changing."""
    real = train_module.evaluate
    after = {}

    def evaluate(parts, split, cfg):  # epoch 1 scores best; remember each epoch's weights
        epoch = len(after) + 1
        after[epoch] = {k: v.detach().clone() for k, v in parts.eval_model.state_dict().items()}
        return real(parts, split, cfg) | {"val_accuracy": 1.0 / epoch}

    monkeypatch.setattr(train_module, "evaluate", evaluate)
    monkeypatch.setenv("FERENS_CHECKPOINT_SECONDS", "3600")  # only after the last epoch
    cfg = _config(tiny_csv, tmp_path, epochs=3, early_stop_metric="accuracy")
    assert train_member(cfg, show_progress=False)["best_epoch"] == 1
    best = load_file(str(cfg.run_dir / "best.safetensors"))
    assert all(torch.equal(best[k], after[1][k]) for k in best)
    assert not all(torch.equal(best[k], after[3][k]) for k in best)


def test_optimizer_state_is_read_on_the_cpu(tiny_csv, tmp_path, monkeypatch):
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: (loads.append(k.get("map_location")),
                                                        real(*a, **k))[1])
    cfg = _config(tiny_csv, tmp_path, epochs=2)
    train_interrupted_then_resumed(cfg, 2, monkeypatch)
    assert loads == ["cpu"]


def test_early_stop_metric_macro_f1_picks_the_epoch_with_the_best_macro_f1(tiny_csv, tmp_path,
                                                                         monkeypatch):
    # accuracy peaks at epoch 1, macro-F1 at epoch 3
    scores = {1: (0.6, 0.2), 2: (0.5, 0.3), 3: (0.4, 0.5)}
    epochs_seen = []

    def scripted(parts, split, cfg):
        epochs_seen.append(len(epochs_seen) + 1)
        accuracy, macro_f1 = scores[epochs_seen[-1]]
        return {"val_loss": 1.0, "val_accuracy": accuracy, "val_macro_f1": macro_f1}

    monkeypatch.setattr(train_module, "evaluate", scripted)
    by_f1 = train_member(_config(tiny_csv, tmp_path / "f1", epochs=3,
                                 early_stop_metric="macro_f1"), show_progress=False)
    epochs_seen.clear()
    by_accuracy = train_member(_config(tiny_csv, tmp_path / "acc", epochs=3),
                               show_progress=False)
    assert (by_f1["best_epoch"], by_accuracy["best_epoch"]) == (3, 1)


def test_the_fp16_grad_scaler_state_is_checkpointed_and_restored_on_resume(tiny_csv, tmp_path,
                                                                          monkeypatch):
    """fp16 on the CPU (autocast and GradScaler work there too): the scaler's scale and growth
    tracker after epoch 1 are what the resumed run starts epoch 2 with."""
    cfg = _config(tiny_csv, tmp_path, epochs=2, precision="fp16", device="cpu")
    real = train_module.train_one_epoch
    scaler_at: dict[tuple[int, str], dict] = {}

    def recording(parts, loader, config, epoch, *rest):
        scaler_at[epoch, "start"] = parts.scaler.state_dict()
        if epoch == 2 and (1, "end") in scaler_at and (2, "resumed") not in scaler_at:
            scaler_at[2, "resumed"] = {}
            raise KeyboardInterrupt
        result = real(parts, loader, config, epoch, *rest)
        scaler_at[epoch, "end"] = parts.scaler.state_dict()
        return result

    monkeypatch.setattr(train_module, "train_one_epoch", recording)
    with pytest.raises(KeyboardInterrupt):
        train_member(cfg, show_progress=False)
    saved = torch.load(cfg.run_dir / "checkpoint" / "epoch-1" / "optimizer.pt",
                       weights_only=True)
    after_epoch_1 = scaler_at[1, "end"]
    fresh = torch.amp.GradScaler("cpu").state_dict()
    assert after_epoch_1 != fresh  # three steps moved the scale or the growth tracker
    assert saved["scaler"] == after_epoch_1
    summary = train_member(cfg, resume=True, show_progress=False)
    assert summary["precision"] == "fp16" and summary["epochs_run"] == 2
    assert scaler_at[2, "start"] == after_epoch_1


def test_resume_refuses_other_data_content_and_accepts_the_same_data_elsewhere(
        tiny_csv, tiny_rows, tmp_path, monkeypatch):
    """Issue 28: the run keeps the SHA-256 of the data it trained on."""
    from conftest import write_fer_csv

    cfg = _config(tiny_csv, tmp_path, epochs=2)
    train_interrupted(cfg, 2, monkeypatch)
    relabelled = [((label + 1) % 7, pixels, usage) for label, pixels, usage in tiny_rows]
    other = write_fer_csv(tmp_path / "other.csv", relabelled)  # same rows, other labels
    saved = (cfg.run_dir / "config.json").read_text()
    with pytest.raises(FerensError, match="is not the data .* was trained on"):
        train_member(_config(other, tmp_path, epochs=2), resume=True, show_progress=False)
    assert (cfg.run_dir / "config.json").read_text() == saved  # the refusal changed nothing
    moved = write_fer_csv(_mkdir(tmp_path / "moved") / "fer2013.csv", tiny_rows)
    summary = train_member(_config(moved, tmp_path, epochs=2), resume=True, show_progress=False)
    assert summary["epochs_run"] == 2


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path
