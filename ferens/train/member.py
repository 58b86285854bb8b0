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
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.model_selection import train_test_split

from ferens.classes import CLASS_NAMES
from ferens.config import TrainConfig, config_differences
from ferens.data.augment import check_train_pipeline
from ferens.data.fer2013 import FerDataset, apply_ferplus_labels, load_fer2013
from ferens.data.imagefolder import holdout
from ferens.data.loader import make_loader
from ferens.errors import FerensError
from ferens.io import atomic_path, folder_lock, write_json
from ferens.models.factory import check_model_name
from ferens.models.inference import configure_threads, predict_logits, select_device
from ferens.models.pretrained import is_timm_spec, pretrained_name
from ferens.provenance import code_commit, library_versions
from ferens.runs import Predictions, save_predictions, split_metrics
from ferens.train.checkpoint import (
    TrainingState,
    checkpoint_interval,
    load_checkpoint,
    save_checkpoint,
)
from ferens.train.loop import (
    TTA_VIEWS,
    TrainingParts,
    build_parts,
    evaluate,
    saved_splits,
    scores_every_tta,
    selection_tta,
    train_one_epoch,
    tta_modes,
)

METRIC_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                  "val_macro_f1", "lr", "seconds", "images_per_second", "val_seconds")
# Fields that may change between an interrupted run and its resumption.
RESUMABLE_FIELDS = ("threads", "data", "workers")
DEADLINE_ENV = "FERENS_DEADLINE"  # unix time by which a member must have written its summary
FINISH_MARGIN = 1.25  # finishing is estimated from the last validation pass, times this


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


def finish_seconds(cfg: TrainConfig, splits: dict, val_seconds: float) -> float:
    """Estimated seconds of ``finish_run`` (saved predictions of every split with the
    configured TTA, and the accuracy of every other TTA mode on val and test), from the cost
    per view of the last validation pass."""
    per_view = val_seconds / max(1, len(splits["val"]) * TTA_VIEWS[selection_tta(cfg)])
    saved = saved_splits(cfg)
    views = sum(len(splits[s]) for s in saved) * TTA_VIEWS[cfg.tta]
    if scores_every_tta(cfg):
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
         f"{', '.join(saved_splits(cfg)[:-1])} and {saved_splits(cfg)[-1]} with the best epoch "
         f"({state.best_epoch}, tta {cfg.tta}) and scoring every TTA mode for summary.json")
    return finish_run(run_dir, cfg, parts, splits, state, threads)


def describe_classes(splits: dict[str, FerDataset]) -> str:
    """One line: each class's rows in train/val/test."""
    counts = {name: part.class_counts() for name, part in splits.items()}
    names = splits["train"].class_names
    return (f"{len(names)} classes, rows per {'/'.join(splits)}: " + ", ".join(
        f"{c} " + "/".join(str(int(counts[s][i])) for s in splits)
        for i, c in enumerate(names)))


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

    saved = saved_splits(cfg)
    for split in saved:
        part = splits[split]
        preds = Predictions(predict_logits(model, part.images, cfg, device,
                                           precision=parts.precision),
                            part.labels, part.row_ids, cfg.class_names, part.files)
        save_predictions(run_dir / "predictions" / f"{split}.npz", preds)
        if split != "train":
            summary[split] = split_metrics(preds)
    if scores_every_tta(cfg):  # the configured mode is what the saved predictions score
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
