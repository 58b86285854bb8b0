"""One training step, one epoch and one validation pass of a member, and the parts they use.

`build_parts` makes the model, loss, optimizer, schedule, scaler, EMA and targets once per run;
`train_one_epoch` runs the deterministic (seed, epoch) order of the training set through
`train_step`; `evaluate` scores the evaluated weights on val with the selection TTA.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from timm.optim import create_optimizer_v2
from torch import nn

from ferens.classes import NUM_CLASSES
from ferens.config import TTA, TrainConfig
from ferens.data.fer2013 import FerDataset
from ferens.data.loader import Loader, epoch_seed, sample_seed
from ferens.models.factory import create_member_model
from ferens.models.inference import autocast, predict_logits, resolve_precision, to_tensor
from ferens.runs import Predictions, split_metrics
from ferens.train.finetune import backbone_frozen, parameter_groups, set_backbone_frozen
from ferens.train.losses import build_loss, distillation_loss
from ferens.train.mixing import mix_batch, mixing_enabled
from ferens.train.targets import ferplus_soft_targets, teacher_probabilities

if TYPE_CHECKING:
    from timm.utils import ModelEmaV3

PROGRESS_EVERY = 20  # steps between host reads of the running loss and accuracy
TTA_VIEWS = {"none": 1, "flip": 2, "shift": 10, "tencrop": 10}


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum (timm's ``sgd``), from timm's optimizer factory;
    weight decay on weights only; the backbone at ``backbone_lr_scale`` x lr.

    The groups are ferens' own (`parameter_groups`), passed as ``param_group_fn``: timm's
    default grouping puts the no-decay group first and, at weight decay 0, makes one group, so
    a checkpoint's optimizer state (saved by group) would not load into it, and its layer
    groups carry an ``lr_scale`` that only timm's schedulers read."""
    return create_optimizer_v2(
        model, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
        param_group_fn=lambda m: parameter_groups(m, cfg.lr, cfg.weight_decay,
                                                  cfg.backbone_lr_scale))


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
    """A per-epoch progress bar on a terminal; a few plain log lines otherwise.

    Not tqdm: study lanes write to log files, where this prints four plain lines an epoch
    (25/50/75/100 %), while tqdm prints a line of block characters at every refresh
    (``mininterval`` 0.1 s: 51 lines, 4350 bytes, for a 5-second epoch; ~600 a minute) unless
    tuned per call; and the host reads the running loss only every
    ``PROGRESS_EVERY`` steps, so there is no per-step value to feed a bar."""

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


def train_one_epoch(parts: TrainingParts, loader: Loader, cfg: TrainConfig,
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


# What engine 1 (the v1 loop of results/study) does differently, all in one place: its
# training stream (`ferens.data.loader.make_loader` picks the loader once), the TTA the best
# epoch is chosen with, and what the finished run predicts and scores. The step and the epoch
# loop read no engine.


def saved_splits(cfg: TrainConfig) -> tuple[str, ...]:
    """The splits a finished member saves predictions of: engine 2 adds train (a teacher's)."""
    return ("val", "test", "train") if cfg.engine >= 2 else ("val", "test")


def scores_every_tta(cfg: TrainConfig) -> bool:
    """Whether summary.json gets ``tta_accuracy`` (every TTA mode on val and test): engine 2."""
    return cfg.engine >= 2


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



def tta_modes(cfg: TrainConfig) -> list[str]:
    """The TTA modes whose accuracy is reported for a member (ten-crop needs a crop)."""
    return [m for m in TTA if m != "tencrop" or cfg.crop_size]

