"""Train one ensemble member and write its run folder.

    >>> from ferens import TrainConfig, train_member
    >>> cfg = TrainConfig(name="r18", epochs=2, max_train_samples=2000)
    >>> summary = train_member(cfg)  # doctest: +SKIP

The folder ``runs/<name>/`` gets config.json, metrics.csv, best.safetensors,
predictions/{val,test}.npz and summary.json; ``checkpoint/`` is written atomically after
every epoch on the CPU (on a GPU every ``FERENS_CHECKPOINT_SECONDS``, 120 s by default, and at
the end), so ``resume=True`` continues an interrupted run to the same result.

A deadline (``deadline=`` unix time, or ``$FERENS_DEADLINE``) stops a member gracefully: it
never starts an epoch whose measured cost, plus writing the predictions, would pass the
deadline; it checkpoints, predicts val, test and train from its best epoch so far and writes a
summary with ``stopped_by_deadline: true``. Resuming such a run continues its training.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.model_selection import train_test_split
from torch import nn

from ferens.classes import CLASS_NAMES, NUM_CLASSES
from ferens.config import TTA, TrainConfig, config_differences
from ferens.data.augment import check_train_pipeline
from ferens.data.fer2013 import FerDataset, apply_ferplus_labels, load_fer2013
from ferens.data.imagefolder import holdout
from ferens.data.loader import DeviceLoader, TrainLoader, epoch_seed, make_loader, sample_seed
from ferens.errors import FerensError
from ferens.io import atomic_path, current_umask, folder_lock, write_json
from ferens.models.factory import check_model_name, create_member_model
from ferens.models.inference import (
    autocast,
    configure_threads,
    predict_logits,
    resolve_precision,
    select_device,
    to_tensor,
)
from ferens.models.pretrained import is_timm_spec, pretrained_name
from ferens.provenance import code_commit, library_versions
from ferens.runs import Predictions, save_predictions, split_metrics
from ferens.train.finetune import backbone_frozen, parameter_groups, set_backbone_frozen
from ferens.train.losses import build_loss, distillation_loss
from ferens.train.mixing import mix_batch, mixing_enabled
from ferens.train.targets import ferplus_soft_targets, teacher_probabilities

if TYPE_CHECKING:
    from timm.utils import ModelEmaV3

METRIC_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                  "val_macro_f1", "lr", "seconds", "images_per_second", "val_seconds")
# Fields that may change between an interrupted run and its resumption.
RESUMABLE_FIELDS = ("threads", "data", "workers")
PROGRESS_EVERY = 20  # steps between host reads of the running loss and accuracy
DEADLINE_ENV = "FERENS_DEADLINE"  # unix time by which a member must have written its summary
CHECKPOINT_SECONDS_ENV = "FERENS_CHECKPOINT_SECONDS"
CUDA_CHECKPOINT_SECONDS = 120.0  # on a GPU, checkpoint (100-250 MB) at most this often
FINISH_MARGIN = 1.25  # finishing is estimated from the last validation pass, times this


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
    resumes: int = 0              # times training continued from a checkpoint (a new session)
    commits: list | None = None   # ferens code commit of each start and resume, in order
    stopped_by_deadline: bool = False  # this session ended before the last epoch
    data_sha256: str | None = None  # of the splits trained on (None: an older checkpoint)


def load_splits(cfg: TrainConfig) -> dict[str, FerDataset]:
    """train/val/test for a config: optional FER+ relabelling and stratified train subsample."""
    ds = load_fer2013(cfg.data)
    if cfg.labels == "ferplus":
        ds = apply_ferplus_labels(ds, cfg.ferplus)
    rows = int((ds.usage == "Training").sum())  # both fractions are shares of these rows
    ds = holdout(holdout(ds, "test", cfg.test_fraction, rows), "val", cfg.val_fraction, rows)
    if cfg.classes is not None and tuple(cfg.classes) != ds.class_names:
        raise FerensError(f"{ds.source}: holds the classes {list(ds.class_names)}, but the "
                          f"config names {list(cfg.classes)}; leave classes out (train-member "
                          "takes them from the data) or fix the folder")
    splits = {name: ds.split(name) for name in ("train", "val", "test")}
    train = splits["train"]
    if cfg.max_train_samples and cfg.max_train_samples < len(train):
        keep, _ = train_test_split(np.arange(len(train)), train_size=cfg.max_train_samples,
                                   stratify=train.labels, random_state=cfg.seed)
        splits["train"] = train.subset(np.sort(keep))
    return splits


def data_sha256(splits: dict[str, FerDataset]) -> str:
    """SHA-256 of what a run trains and selects on: every split's images, labels and row ids
    after relabelling and subsampling, so other content under the same path (same rows, other
    labels) gives another digest, and the same content elsewhere the same one."""
    digest = hashlib.sha256()
    if splits["train"].class_names != CLASS_NAMES:  # FER2013's own digests stay as they were
        digest.update(json.dumps(list(splits["train"].class_names)).encode())
    for name in ("train", "val", "test"):
        part = splits[name]
        for array in (part.images, part.labels.astype(np.int64), part.row_ids.astype(np.int64)):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD; weight decay on weights only; the backbone at ``backbone_lr_scale`` x lr."""
    groups = parameter_groups(model, cfg.lr, cfg.weight_decay, cfg.backbone_lr_scale)
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


@dataclass
class TrainingParts:
    """Everything one training step touches, built once per run (see ``build_parts``)."""

    model: nn.Module          # the raw module: its weights are saved
    forward: nn.Module        # the module called in the loop (torch.compile'd when asked)
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    precision: str            # resolved: fp32, bf16 or fp16
    scaler: torch.amp.GradScaler | None = None    # fp16 only; created once, checkpointed
    ema: ModelEmaV3 | None = None
    targets: torch.Tensor | None = None  # (N,7) soft training targets (FER+), else labels
    teacher: torch.Tensor | None = None  # (N,7) softened teacher probabilities
    labels: torch.Tensor | None = None   # (N,) training labels on the device
    init_note: dict | None = None        # --init: where the weights came from, head kept?

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved: the EMA when it is on."""
        return self.ema.module if self.ema is not None else self.model


def build_parts(cfg: TrainConfig, train: FerDataset, device: torch.device) -> TrainingParts:
    """Model, loss, optimizer, schedule, scaler, EMA and targets for one run."""
    torch.manual_seed(cfg.seed)
    model = create_member_model(cfg.model, cfg.stem, cfg.width, cfg.pretrained, cfg.drop_rate,
                                num_classes=cfg.num_classes)
    init_note = None
    if cfg.init:
        from ferens.models.initialise import apply_init, resolve_init

        init_note = apply_init(model, resolve_init(cfg.init), cfg)
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
    precision = resolve_precision(cfg.precision, device)
    parts = TrainingParts(model=model, forward=torch.compile(model) if cfg.compile else model,
                          loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler,
                          device=device, precision=precision,
                          labels=torch.from_numpy(train.labels).to(device),
                          init_note=init_note)
    if precision == "fp16":
        parts.scaler = torch.amp.GradScaler(device.type)
    if cfg.ema_decay:
        from timm.utils import ModelEmaV3

        parts.ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True)
    if cfg.ferplus_soft:
        parts.targets = torch.from_numpy(
            ferplus_soft_targets(train, cfg.ferplus, cfg.ferplus_soft)).to(device)
    if cfg.teacher:
        parts.teacher = torch.from_numpy(
            teacher_probabilities(cfg.teacher, train, cfg.distill_temperature)).to(device)
    return parts


def _step_loss(parts: TrainingParts, cfg: TrainConfig, x: torch.Tensor, idx: torch.Tensor,
               mix_seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, logits, labels) of one batch: hard labels unless soft targets, mixing or a
    teacher are on."""
    y = parts.labels[idx]
    soft = parts.targets is not None or mixing_enabled(cfg)
    target = (parts.targets[idx] if parts.targets is not None
              else one_hot_tensor(y, cfg.num_classes) if soft else y)
    extra = [parts.teacher[idx]] if parts.teacher is not None else []
    if mixing_enabled(cfg):
        x, mixed, _ = mix_batch(x, [target, *extra], mix_seed, cfg)
        target, extra = mixed[0], mixed[1:]
    with autocast(parts.device, parts.precision):
        logits = parts.forward(x)
    loss = parts.loss_fn(logits.float(), target)
    if extra:
        w = cfg.distill_weight
        loss = (1 - w) * loss + w * distillation_loss(logits, extra[0], cfg.distill_temperature)
    return loss, logits, y


def one_hot_tensor(y: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    return nn.functional.one_hot(y, num_classes).float()


def train_step(parts: TrainingParts, cfg: TrainConfig, epoch: int, images: torch.Tensor,
               idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimisation step on one loader batch; returns (loss, logits, labels) on the device.

    The batch's indices are read on the host (for the mixing seed) before they are copied, so
    the step never waits for the device."""
    # a DeviceLoader's batches are already augmented, scaled and on the device
    x = images if images.is_floating_point() else to_tensor(images, parts.device,
                                                             cfg.channels_last)
    mix_seed = sample_seed(cfg.seed, epoch, int(idx[0])) ^ 0x5EED  # idx is on the host
    idx = idx.to(parts.device, non_blocking=True)
    loss, logits, y = _step_loss(parts, cfg, x, idx, mix_seed)
    parts.optimizer.zero_grad(set_to_none=True)
    if parts.scaler is not None:
        parts.scaler.scale(loss).backward()
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
    else:
        loss.backward()
        parts.optimizer.step()
    parts.scheduler.step()
    if parts.ema is not None:
        parts.ema.update(parts.model, step=parts.scheduler.last_epoch)
    return loss, logits, y


def train_one_epoch(parts: TrainingParts, loader: TrainLoader | DeviceLoader, cfg: TrainConfig,
                    epoch: int, show_progress: bool = True) -> dict:
    """One pass over the deterministic (seed, epoch) order of the training set.

    Loss and accuracy accumulate on the device; the host reads them only every
    ``PROGRESS_EVERY`` steps, so a GPU is never stalled by a per-step synchronisation."""
    torch.manual_seed(epoch_seed(cfg.seed, epoch))
    parts.model.train()
    if cfg.freeze_backbone_epochs:
        set_backbone_frozen(parts.model, backbone_frozen(epoch, cfg.freeze_backbone_epochs))
    total_loss = torch.zeros((), dtype=torch.float64, device=parts.device)
    correct = torch.zeros((), dtype=torch.int64, device=parts.device)
    seen, start = 0, time.perf_counter()
    progress = Progress(epoch, cfg.epochs, len(loader.batches.labels), show_progress)
    for step, (images, idx) in enumerate(loader.epoch(epoch), start=1):
        loss, logits, y = train_step(parts, cfg, epoch, images, idx)
        n = len(idx)
        total_loss += loss.detach().double() * n
        correct += (logits.detach().argmax(1) == y).sum()
        seen += n
        if step % PROGRESS_EVERY == 0 or seen >= progress.total:
            progress.update(seen, total_loss.item() / seen, correct.item() / seen,
                            seen / (time.perf_counter() - start))
    progress.close()
    seconds = time.perf_counter() - start
    return {"train_loss": total_loss.item() / seen, "train_accuracy": correct.item() / seen,
            "seconds": seconds, "images_per_second": seen / seconds}


def selection_tta(cfg: TrainConfig) -> str:
    """The TTA the best epoch is chosen with: ``select_tta``, by default the saved predictions'
    (engine 2); none in v1."""
    if cfg.engine < 2:
        return "none"
    return cfg.tta if cfg.select_tta == "auto" else cfg.select_tta


def evaluate(parts: TrainingParts, split: FerDataset, cfg: TrainConfig) -> dict:
    """Validation loss, accuracy and macro-F1 of the evaluated weights, with the selection
    TTA: by default the saved predictions', so the chosen epoch is the one they score best."""
    logits = predict_logits(parts.eval_model, split.images, cfg, parts.device,
                            tta=selection_tta(cfg), precision=parts.precision)
    metrics = split_metrics(Predictions(logits, split.labels, split.row_ids, cfg.class_names))
    with torch.no_grad():
        loss = parts.loss_fn.cpu()(torch.from_numpy(logits), torch.from_numpy(split.labels))
    parts.loss_fn.to(parts.device)
    return {"val_loss": loss.item(), "val_accuracy": metrics["accuracy"],
            "val_macro_f1": metrics["macro_f1"]}


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(run_dir: Path, parts: TrainingParts, state: TrainingState) -> None:
    """Write checkpoint/epoch-K fully, then point checkpoint/latest.json at it (atomic)."""
    root = run_dir / "checkpoint"
    final = root / f"epoch-{state.epoch}"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"epoch-{state.epoch}.tmp-", dir=root))
    tmp.chmod(0o777 & ~current_umask())  # not mkdtemp's 0700: the run stays shared
    save_file(_state_dict(parts.model), str(tmp / "model.safetensors"))
    if parts.ema is not None:
        save_file(_state_dict(parts.ema.module), str(tmp / "ema.safetensors"))
    extra = {"optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict()}
    if parts.scaler is not None:
        extra["scaler"] = parts.scaler.state_dict()
    torch.save(extra, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state.__dict__))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_json(root / "latest.json", {"epoch": state.epoch, "folder": final.name})
    for old in root.glob("epoch-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run_dir: Path, parts: TrainingParts) -> TrainingState | None:
    """Restore the last complete epoch; a damaged checkpoint is one clear error."""
    latest = run_dir / "checkpoint" / "latest.json"
    if not latest.is_file():
        return None
    device = parts.device
    try:
        folder = run_dir / "checkpoint" / json.loads(latest.read_text())["folder"]
        parts.model.load_state_dict(load_file(str(folder / "model.safetensors"),
                                              device=str(device)))
        if parts.ema is not None:
            parts.ema.module.load_state_dict(load_file(str(folder / "ema.safetensors"),
                                                       device=str(device)))
        # on the CPU first: load_state_dict moves the moments to the parameters' device but
        # keeps AdamW's `step` counters on the CPU, where reading them costs no sync
        extra = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        parts.optimizer.load_state_dict(extra["optimizer"])
        parts.scheduler.load_state_dict(extra["scheduler"])
        if parts.scaler is not None and "scaler" in extra:
            parts.scaler.load_state_dict(extra["scaler"])
        return TrainingState(**json.loads((folder / "state.json").read_text()))
    except Exception as exc:  # any damage: truncated file, bad JSON, wrong shapes
        raise FerensError(f"{run_dir / 'checkpoint'}: cannot resume from a damaged checkpoint "
                          f"({type(exc).__name__}: {str(exc)[:200]}); delete the folder to "
                          "start over") from None


def write_metrics(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _check_run_dir(cfg: TrainConfig, resume: bool, name_from: str = "") -> Path:
    """Refuse to start over an existing run, or to resume it with another config;
    ``name_from`` says where the run's name came from (for the message)."""
    run_dir = cfg.run_dir
    saved = run_dir / "config.json"
    if saved.is_file():
        if not resume:
            origin = f" (name {cfg.name!r}: {name_from})" if name_from else ""
            raise FerensError(f"{run_dir} already exists{origin}; pass --resume to continue "
                              "it or choose another --name")
        # classes: filled in from the data; a resumed run checks the data's digest instead
        ignore = RESUMABLE_FIELDS + (("classes",) if cfg.classes is None else ())
        diffs = config_differences(TrainConfig.load(saved), cfg, ignore=ignore)
        if diffs:
            raise FerensError(f"{saved}: cannot resume with a different config: "
                              + "; ".join(diffs))
    return run_dir


def check_trainable(cfg: TrainConfig) -> None:
    """The checks of a config that need timm or albumentations, kept out of ``TrainConfig`` so
    reading a config never imports them: the model is a ResNet of timm.models.resnet, and an
    ``augment_override`` builds and turns a 48x48 face into a training image. `train_member`
    runs them before anything is written, and ``ferens study`` for every member it will train
    before starting any."""
    check_model_name(cfg.model)
    if is_timm_spec(cfg.pretrained):
        pretrained_name(cfg.model, cfg.pretrained)  # timm knows the tag (no file read)
    if cfg.augment_override:
        check_train_pipeline(cfg.augment, cfg.input_size, cfg.crop_size, cfg.augment_override,
                             flip=not cfg.alternate_flip)


def train_member(cfg: TrainConfig, resume: bool = False, show_progress: bool = True,
                 name_from: str = "", name_derived: bool = False,
                 deadline: float | None = None) -> dict:
    """Train (or resume) one member and write its run folder; returns the summary.

    ``deadline`` (unix time; default ``$FERENS_DEADLINE``) stops training gracefully before
    it would be passed (see the module docstring). The model and augmentation
    (`check_trainable`), data, device and targets are checked before anything is written, so a
    failed command leaves no run folder behind to block the corrected one. ``name_from`` (e.g.
    "from --config x.toml") is named when an existing run refuses the name."""
    check_trainable(cfg)
    deadline = deadline_from_env() if deadline is None else deadline
    with folder_lock(cfg.run_dir):  # two writers on one run folder would corrupt it
        return _train_member(cfg, resume, show_progress, name_from, name_derived, deadline)


def _say(show: bool, text: str) -> None:
    if show:
        print(text, file=sys.stderr, flush=True)


def deadline_from_env() -> float | None:
    """``$FERENS_DEADLINE`` as a unix time, None when unset; a bad value is one clear error."""
    raw = os.environ.get(DEADLINE_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise FerensError(f"${DEADLINE_ENV}={raw!r}: expected a unix time in seconds")
    return value


def checkpoint_interval(device: torch.device) -> float:
    """Seconds between checkpoints: 0 (every epoch) on the CPU, 120 on a GPU, or
    ``$FERENS_CHECKPOINT_SECONDS``. The last epoch and a deadline stop always checkpoint."""
    raw = os.environ.get(CHECKPOINT_SECONDS_ENV, "").strip()
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            raise FerensError(f"${CHECKPOINT_SECONDS_ENV}={raw!r}: expected seconds") from None
    return CUDA_CHECKPOINT_SECONDS if device.type == "cuda" else 0.0


TTA_VIEWS = {"none": 1, "flip": 2, "shift": 10, "tencrop": 10}


def finish_seconds(cfg: TrainConfig, splits: dict, val_seconds: float) -> float:
    """Estimated seconds of ``finish_run`` (saved predictions of every split with the
    configured TTA, and the accuracy of every other TTA mode on val and test), from the cost
    per view of the last validation pass."""
    per_view = val_seconds / max(1, len(splits["val"]) * TTA_VIEWS[selection_tta(cfg)])
    saved = ("val", "test", "train") if cfg.engine >= 2 else ("val", "test")
    views = sum(len(splits[s]) for s in saved) * TTA_VIEWS[cfg.tta]
    if cfg.engine >= 2:
        views += sum(TTA_VIEWS[m] for m in tta_modes(cfg) if m != cfg.tta) * (
            len(splits["val"]) + len(splits["test"]))
    return FINISH_MARGIN * per_view * views + 1.0


def _train_member(cfg: TrainConfig, resume: bool, show_progress: bool, name_from: str,
                  name_derived: bool, deadline: float | None) -> dict:
    run_dir = _check_run_dir(cfg, resume, name_from)
    if resume and (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
        if not summary.get("stopped_by_deadline"):
            return summary  # finished; a deadline-stopped run trains on
    if deadline is not None and time.time() >= deadline:
        raise FerensError(f"{cfg.name}: the deadline (${DEADLINE_ENV}) passed before training "
                          "started")
    threads = configure_threads(cfg.threads)
    device = select_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    splits = load_splits(cfg)
    digest = data_sha256(splits)
    train = splits["train"]
    if cfg.classes is None and train.class_names != CLASS_NAMES:  # the data's own classes
        cfg = replace(cfg, classes=list(train.class_names))
    _say(show_progress, f"data {splits['train'].source}: " + ", ".join(
        f"{name} {len(part)} rows" for name, part in splits.items())
        + f"; {cfg.epochs} epoch(s) of {cfg.model} on {device.type} -> {run_dir}")
    _say(show_progress, describe_classes(splits))
    parts = build_parts(cfg, train, device)
    if parts.init_note is not None:
        _say(show_progress, f"--init {cfg.init}: {parts.init_note['note']}")
    state = (load_checkpoint(run_dir, parts) if resume else None) or TrainingState(rows=[])
    if state.data_sha256 not in (None, digest):
        raise FerensError(f"{cfg.data}: is not the data {run_dir} was trained on (its content "
                          "differs: other rows, labels or images); resume with the same data, "
                          "or start a new run with another --name")
    state.data_sha256 = digest
    if name_derived:  # said once the inputs are checked, so an error stays one line
        print(f"run name {cfg.name!r} ({name_from}): writing {run_dir}", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.json")
    state.stopped_by_deadline = False
    if state.epoch:
        state.resumes += 1
        print(f"resuming {run_dir} after epoch {state.epoch} (resume {state.resumes})",
              file=sys.stderr)
    if state.epoch < cfg.epochs and not state.stopped_early:
        state.commits = [*(state.commits or []), code_commit()]
    loader = make_loader(train.images, train.labels, cfg, device)
    interval = checkpoint_interval(device)
    last_checkpoint, checkpoint_cost = time.perf_counter(), 0.0
    best_weights = None  # the best epoch's weights, until the next checkpoint writes them

    while state.epoch < cfg.epochs and not state.stopped_early:
        epoch = state.epoch + 1
        row = {"epoch": epoch, "lr": parts.optimizer.param_groups[0]["lr"]}
        row |= train_one_epoch(parts, loader, cfg, epoch, show_progress)
        eval_start = time.perf_counter()
        row |= evaluate(parts, splits["val"], cfg)
        row["val_seconds"] = time.perf_counter() - eval_start
        state.rows.append(row)
        state.epoch, state.train_seconds = epoch, state.train_seconds + row["seconds"]
        score = row["val_" + cfg.early_stop_metric]
        if score > state.best_score:
            state.best_score, state.best_epoch, state.epochs_without_improvement = score, epoch, 0
            best_weights = {k: v.detach().to("cpu", copy=True,  # a copy on the CPU too
                                             memory_format=torch.contiguous_format)
                            for k, v in parts.eval_model.state_dict().items()}
        else:
            state.epochs_without_improvement += 1
        write_metrics(run_dir / "metrics.csv", state.rows)
        if show_progress:
            print(f"epoch {epoch}: val acc {row['val_accuracy']:.4f} "
                  f"macro-F1 {row['val_macro_f1']:.4f} ({row['seconds']:.0f}s)", file=sys.stderr)
        state.stopped_early = bool(cfg.patience
                                   and state.epochs_without_improvement >= cfg.patience)
        last = state.epoch >= cfg.epochs or state.stopped_early
        if deadline is not None and not last:
            need = (row["seconds"] + row["val_seconds"] + checkpoint_cost
                    + finish_seconds(cfg, splits, row["val_seconds"]))
            left = deadline - time.time()
            if need > left:
                state.stopped_by_deadline = True
                print(f"{cfg.name}: stopping after epoch {epoch} of {cfg.epochs}: another "
                      f"epoch and the predictions need ~{need:.0f} s, the deadline is "
                      f"{left:.0f} s away", file=sys.stderr, flush=True)
        if last or state.stopped_by_deadline or time.perf_counter() - last_checkpoint >= interval:
            start = time.perf_counter()
            if best_weights is not None:  # first, so a checkpoint never outruns its best
                with atomic_path(run_dir / "best.safetensors") as tmp:
                    save_file(best_weights, str(tmp))
                best_weights = None
            save_checkpoint(run_dir, parts, state)
            last_checkpoint = time.perf_counter()
            checkpoint_cost = last_checkpoint - start
        if state.stopped_by_deadline:
            break
    _say(show_progress, ("stopped by the deadline" if state.stopped_by_deadline else
                         "training done") + ": predicting "
         f"{'val, test and train' if cfg.engine >= 2 else 'val and test'} with the best epoch "
         f"({state.best_epoch}, tta {cfg.tta}) and scoring every TTA mode for summary.json")
    return finish_run(run_dir, cfg, parts, splits, state, threads)


def describe_classes(splits: dict[str, FerDataset]) -> str:
    """One line: each class's rows in train/val/test."""
    counts = {name: part.class_counts() for name, part in splits.items()}
    names = splits["train"].class_names
    return (f"{len(names)} classes, rows per {'/'.join(splits)}: " + ", ".join(
        f"{c} " + "/".join(str(int(counts[s][i])) for s in splits)
        for i, c in enumerate(names)))


def tta_modes(cfg: TrainConfig) -> list[str]:
    """The TTA modes whose accuracy is reported for a member (ten-crop needs a crop)."""
    return [m for m in TTA if m != "tencrop" or cfg.crop_size]


def finish_run(run_dir: Path, cfg: TrainConfig, parts: TrainingParts, splits: dict,
               state: TrainingState, threads: int) -> dict:
    """Reload the best epoch, predict val and test (and train, for distillation) with the
    configured TTA, measure every TTA mode, and write the summary."""
    device, model = parts.device, parts.eval_model
    model.load_state_dict(load_file(str(run_dir / "best.safetensors"), device=str(device)))
    summary = {"name": cfg.name, "kind": "member", "model": cfg.model, "stem": cfg.stem,
               "width": cfg.width, "imbalance": cfg.imbalance, "best_epoch": state.best_epoch,
               "epochs_run": state.epoch, "stopped_early": state.stopped_early,
               # a deadline ended this session before the last epoch: resume to train on
               "stopped_by_deadline": state.stopped_by_deadline, "epochs_planned": cfg.epochs,
               "engine": cfg.engine, "selection_tta": selection_tta(cfg), "labels": cfg.labels}
    if cfg.labels == "ferplus":
        summary["labels_note"] = ("FER+ majority labels on every split: val and test are "
                                  "relabelled and filtered, so these numbers are not "
                                  "comparable with FER2013-label runs")
    if parts.init_note is not None:
        summary["init"] = parts.init_note
    eval_start = time.perf_counter()

    def accuracy_with(split: str, mode: str) -> float:
        part = splits[split]
        logits = predict_logits(model, part.images, cfg, device, tta=mode,
                                precision=parts.precision)
        return split_metrics(Predictions(logits, part.labels, part.row_ids,
                                         cfg.class_names))["accuracy"]

    saved = ("val", "test", "train") if cfg.engine >= 2 else ("val", "test")
    for split in saved:
        part = splits[split]
        preds = Predictions(predict_logits(model, part.images, cfg, device,
                                           precision=parts.precision),
                            part.labels, part.row_ids, cfg.class_names, part.files)
        save_predictions(run_dir / "predictions" / f"{split}.npz", preds)
        if split != "train":
            summary[split] = split_metrics(preds)
    if cfg.engine >= 2:  # the configured mode is what the saved predictions already score
        summary["tta_accuracy"] = {
            split: {mode: summary[split]["accuracy"] if mode == cfg.tta
                    else accuracy_with(split, mode) for mode in tta_modes(cfg)}
            for split in ("val", "test")}
    rates = [r["images_per_second"] for r in state.rows]
    summary |= {
        "train_minutes": state.train_seconds / 60,
        # predicting val after every epoch (with the selection TTA); rows before this was
        # recorded count as 0
        "val_minutes": sum(r.get("val_seconds", 0.0) for r in state.rows) / 60,
        "eval_seconds": time.perf_counter() - eval_start,
        "images_per_second": float(np.median(rates)) if rates else None,
        "threads": threads, "workers": cfg.workers, "device": device.type,
        "precision": parts.precision,
        "train_samples": int(len(splits["train"])),
        "torch": torch.__version__,
        "versions": library_versions(),
        "resumes": state.resumes,
        # the ferens commit of every training session (start, then each resume); '-dirty'
        # when the code differed from it, None outside a git checkout
        "code_commits": state.commits or [],
    }
    write_json(run_dir / "summary.json", summary)
    return summary
