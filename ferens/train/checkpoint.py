"""A member's checkpoint: what it restores (`TrainingState`), how it is written atomically and
read back, and how often it is written (`checkpoint_interval`)."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ferens.errors import FerensError
from ferens.io import current_umask, write_json
from ferens.train.loop import TrainingParts

CHECKPOINT_SECONDS_ENV = "FERENS_CHECKPOINT_SECONDS"
CUDA_CHECKPOINT_SECONDS = 120.0  # on a GPU, checkpoint (100-250 MB) at most this often


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


