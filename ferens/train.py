"""Train one ensemble member and write its run folder.

    >>> from ferens import TrainConfig, train_member
    >>> cfg = TrainConfig(name="r18", epochs=2, max_train_samples=2000)
    >>> summary = train_member(cfg)  # doctest: +SKIP

The folder ``runs/<name>/`` gets config.json, metrics.csv, best.safetensors,
predictions/{val,test}.npz and summary.json; ``checkpoint/`` is written atomically after
every epoch so ``resume=True`` continues an interrupted run to the same result.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.model_selection import train_test_split
from torch import nn

from ferens.augment import apply, eval_pipeline, train_pipeline
from ferens.classes import CLASS_NAMES
from ferens.config import TrainConfig, config_differences
from ferens.data import FerDataset, apply_ferplus_labels, load_fer2013
from ferens.errors import FerensError
from ferens.losses import build_loss
from ferens.models import create_member_model
from ferens.predictions import (
    Predictions,
    atomic_path,
    save_predictions,
    split_metrics,
    write_json,
)
from ferens.sampling import epoch_order

METRIC_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                  "val_macro_f1", "lr", "seconds", "images_per_second")
# Fields that may change between an interrupted run and its resumption.
RESUMABLE_FIELDS = ("threads", "data")


def select_device() -> torch.device:
    """CUDA when present, otherwise the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def configure_threads(threads: int) -> int:
    """Set torch's intra-op threads; 0 means $OMP_NUM_THREADS or every core."""
    chosen = threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or (os.cpu_count() or 1)
    torch.set_num_threads(chosen)
    return chosen


def to_tensor(images: np.ndarray, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 (N,H,W) -> float (N,1,H,W) scaled to [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).unsqueeze(1).float()
    x = x.div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.inference_mode()
def predict_logits(model: nn.Module, images: np.ndarray, cfg: TrainConfig,
                   device: torch.device, tta: str | None = None,
                   batch_size: int = 256) -> np.ndarray:
    """Logits for (N,48,48) uint8 images; with TTA, log of the averaged view probabilities."""
    tta = cfg.tta if tta is None else tta
    model.eval()
    images = apply(eval_pipeline(cfg.input_size), images)
    out = []
    for start in range(0, len(images), batch_size):
        views = _tta_views(images[start:start + batch_size], cfg, tta)
        logits = [model(to_tensor(v, device, cfg.channels_last)).float() for v in views]
        if len(logits) == 1:
            out.append(logits[0].cpu())
        else:
            probs = torch.stack([lg.softmax(1) for lg in logits]).mean(0)
            out.append(probs.clamp_min(1e-12).log().cpu())
    return torch.cat(out).numpy()


def _tta_views(batch: np.ndarray, cfg: TrainConfig, tta: str) -> list[np.ndarray]:
    if cfg.crop_size:
        c, size = cfg.crop_size, cfg.input_size
        mid = (size - c) // 2
        center = batch[:, mid:mid + c, mid:mid + c]
        if tta != "tencrop":
            crops = [center]
        else:
            corners = [(0, 0), (0, size - c), (size - c, 0), (size - c, size - c)]
            crops = [center] + [batch[:, y:y + c, x:x + c] for y, x in corners]
    else:
        crops = [batch]
    if tta == "none":
        return crops
    return crops + [crop[:, :, ::-1] for crop in crops]


@dataclass
class TrainingState:
    """What a checkpoint restores: progress, best score and the metrics so far."""

    epoch: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    rows: list | None = None
    train_seconds: float = 0.0
    stopped_early: bool = False


def load_splits(cfg: TrainConfig) -> dict[str, FerDataset]:
    """train/val/test for a config: optional FER+ relabelling and stratified train subsample."""
    ds = load_fer2013(cfg.data)
    if cfg.labels == "ferplus":
        ds = apply_ferplus_labels(ds, cfg.ferplus)
    splits = {name: ds.split(name) for name in ("train", "val", "test")}
    train = splits["train"]
    if cfg.max_train_samples and cfg.max_train_samples < len(train):
        keep, _ = train_test_split(np.arange(len(train)), train_size=cfg.max_train_samples,
                                   stratify=train.labels, random_state=cfg.seed)
        splits["train"] = train.subset(np.sort(keep))
    return splits


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int,
                       total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base lr, then cosine decay to zero, stepped per batch."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Progress:
    """A per-epoch progress bar on a terminal; a few plain log lines otherwise."""

    def __init__(self, epoch: int, epochs: int, total: int, enabled: bool = True):
        self.prefix, self.total, self.enabled = f"epoch {epoch}/{epochs}", total, enabled
        self.tty = sys.stderr.isatty()
        self.next_log = 0.25

    def update(self, done: int, loss: float, acc: float, ips: float) -> None:
        if not self.enabled:
            return
        frac = done / self.total
        text = f"{self.prefix} loss {loss:.4f} acc {acc:.4f} {ips:.0f} img/s"
        if self.tty:
            bar = "#" * int(frac * 30)
            print(f"\r{self.prefix} [{bar:<30}] {100 * frac:3.0f}% {text[len(self.prefix):]}",
                  end="", file=sys.stderr, flush=True)
        elif frac >= self.next_log or done == self.total:
            print(f"{text} ({100 * frac:.0f}%)", file=sys.stderr, flush=True)
            self.next_log += 0.25

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr, flush=True)


def train_one_epoch(model, loss_fn, optimizer, scheduler, train: FerDataset, cfg: TrainConfig,
                    device: torch.device, epoch: int, show_progress: bool = True) -> dict:
    """One pass over a deterministic (seed, epoch) order of the training set."""
    epoch_seed = cfg.seed * 100_003 + epoch
    torch.manual_seed(epoch_seed)
    order = epoch_order(train.labels, epoch_seed, oversample=cfg.imbalance == "oversample",
                        power=cfg.oversample_power)
    pipeline = train_pipeline(cfg.augment, cfg.input_size, cfg.crop_size, cfg.augment_override,
                              seed=epoch_seed)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    model.train()
    total_loss, correct, seen, start = 0.0, 0, 0, time.perf_counter()
    progress = Progress(epoch, cfg.epochs, len(order), show_progress)
    for begin in range(0, len(order), cfg.batch_size):
        idx = order[begin:begin + cfg.batch_size]
        if len(idx) < 2:
            continue
        x = to_tensor(apply(pipeline, train.images[idx]), device, cfg.channels_last)
        y = torch.from_numpy(train.labels[idx]).to(device)
        with torch.autocast("cuda", enabled=scaler is not None):
            logits = model(x)
            loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(idx)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(idx)
        progress.update(seen, total_loss / seen, correct / seen,
                        seen / (time.perf_counter() - start))
    progress.close()
    seconds = time.perf_counter() - start
    return {"train_loss": total_loss / seen, "train_accuracy": correct / seen,
            "seconds": seconds, "images_per_second": seen / seconds}


def evaluate(model, loss_fn, split: FerDataset, cfg: TrainConfig, device: torch.device) -> dict:
    """Validation loss, accuracy and macro-F1 without TTA (used for model selection)."""
    logits = predict_logits(model, split.images, cfg, device, tta="none")
    preds = Predictions(logits, split.labels, split.row_ids)
    metrics = split_metrics(preds)
    with torch.no_grad():
        loss = loss_fn.cpu()(torch.from_numpy(logits), torch.from_numpy(split.labels)).item()
    loss_fn.to(device)
    return {"val_loss": loss, "val_accuracy": metrics["accuracy"],
            "val_macro_f1": metrics["macro_f1"]}


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, state: TrainingState) -> None:
    """Write checkpoint/epoch-K fully, then point checkpoint/latest.json at it (atomic)."""
    root = run_dir / "checkpoint"
    final = root / f"epoch-{state.epoch}"
    tmp = root / f"epoch-{state.epoch}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_state_dict(model), str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
               tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state.__dict__))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_json(root / "latest.json", {"epoch": state.epoch, "folder": final.name})
    for old in root.glob("epoch-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run_dir: Path, model, optimizer, scheduler,
                    device: torch.device) -> TrainingState | None:
    latest = run_dir / "checkpoint" / "latest.json"
    if not latest.is_file():
        return None
    folder = run_dir / "checkpoint" / json.loads(latest.read_text())["folder"]
    model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)))
    extra = torch.load(folder / "optimizer.pt", map_location=device, weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    return TrainingState(**json.loads((folder / "state.json").read_text()))


def write_metrics(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _prepare_run_dir(cfg: TrainConfig, resume: bool) -> Path:
    run_dir = cfg.run_dir
    saved = run_dir / "config.json"
    if saved.is_file():
        if not resume:
            raise FerensError(f"{run_dir} already exists; pass --resume to continue it "
                              "or choose another --name")
        diffs = config_differences(TrainConfig.load(saved), cfg, ignore=RESUMABLE_FIELDS)
        if diffs:
            raise FerensError(f"{saved}: cannot resume with a different config: "
                              + "; ".join(diffs))
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(saved)
    return run_dir


def train_member(cfg: TrainConfig, resume: bool = False, show_progress: bool = True) -> dict:
    """Train (or resume) one member and write its run folder; returns the summary."""
    run_dir = _prepare_run_dir(cfg, resume)
    if resume and (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "summary.json").read_text())
    threads = configure_threads(cfg.threads)
    device = select_device()
    splits = load_splits(cfg)
    train = splits["train"]

    torch.manual_seed(cfg.seed)
    model = create_member_model(cfg.model, cfg.stem, cfg.width, cfg.pretrained, cfg.drop_rate)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg.imbalance, train.class_counts(), weight_scheme=cfg.weight_scheme,
                         beta=cfg.effective_beta, focal_gamma=cfg.focal_gamma,
                         focal_alpha=cfg.focal_alpha,
                         label_smoothing=cfg.label_smoothing).to(device)
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    scheduler = cosine_with_warmup(optimizer, int(cfg.warmup_epochs * steps_per_epoch),
                                   cfg.epochs * steps_per_epoch)
    state = (load_checkpoint(run_dir, model, optimizer, scheduler, device) if resume else None)
    state = state or TrainingState(rows=[])
    if state.epoch:
        print(f"resuming {run_dir} after epoch {state.epoch}", file=sys.stderr)

    while state.epoch < cfg.epochs and not state.stopped_early:
        epoch = state.epoch + 1
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        row |= train_one_epoch(model, loss_fn, optimizer, scheduler, train, cfg, device, epoch,
                               show_progress)
        row |= evaluate(model, loss_fn, splits["val"], cfg, device)
        state.rows.append(row)
        state.epoch, state.train_seconds = epoch, state.train_seconds + row["seconds"]
        score = row["val_" + cfg.early_stop_metric]
        if score > state.best_score:
            state.best_score, state.best_epoch, state.epochs_without_improvement = score, epoch, 0
            with atomic_path(run_dir / "best.safetensors") as tmp:
                save_file(_state_dict(model), str(tmp))
        else:
            state.epochs_without_improvement += 1
        write_metrics(run_dir / "metrics.csv", state.rows)
        if show_progress:
            print(f"epoch {epoch}: val acc {row['val_accuracy']:.4f} "
                  f"macro-F1 {row['val_macro_f1']:.4f} ({row['seconds']:.0f}s)", file=sys.stderr)
        state.stopped_early = bool(cfg.patience
                                   and state.epochs_without_improvement >= cfg.patience)
        save_checkpoint(run_dir, model, optimizer, scheduler, state)
    return finish_run(run_dir, cfg, model, splits, state, device, threads)


def finish_run(run_dir: Path, cfg: TrainConfig, model: nn.Module, splits: dict,
               state: TrainingState, device: torch.device, threads: int) -> dict:
    """Reload the best epoch, predict val and test (with TTA) and write the summary."""
    model.load_state_dict(load_file(str(run_dir / "best.safetensors"), device=str(device)))
    summary = {"name": cfg.name, "kind": "member", "model": cfg.model, "stem": cfg.stem,
               "width": cfg.width, "imbalance": cfg.imbalance, "best_epoch": state.best_epoch,
               "epochs_run": state.epoch, "stopped_early": state.stopped_early}
    eval_start = time.perf_counter()
    for split in ("val", "test"):
        part = splits[split]
        preds = Predictions(predict_logits(model, part.images, cfg, device), part.labels,
                            part.row_ids, CLASS_NAMES)
        save_predictions(run_dir / "predictions" / f"{split}.npz", preds)
        summary[split] = split_metrics(preds)
    rates = [r["images_per_second"] for r in state.rows]
    summary |= {
        "train_minutes": state.train_seconds / 60,
        "eval_seconds": time.perf_counter() - eval_start,
        "images_per_second": float(np.median(rates)) if rates else None,
        "threads": threads, "device": device.type,
        "train_samples": int(len(splits["train"])),
        "torch": torch.__version__,
    }
    write_json(run_dir / "summary.json", summary)
    return summary
