"""Training curves: each trained run's metrics.csv, read and summarised (no torch).

A member's folder holds ``metrics.csv`` with one row per epoch (see ``ferens.train.member``);
ensembles and adjusted runs have none. `training_curves` reads it for every run that has one and
says, as numbers, whether the run was still improving when its schedule ended: the epoch of its
best val accuracy, the last epoch's val accuracy against that best, and the gain of the last
10% of epochs (their best val accuracy minus the best before them).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ferens.errors import FerensError
from ferens.runs import Run

METRICS_FILE = "metrics.csv"
# the per-epoch columns a curve keeps, where the file has them (older runs lack some)
CURVE_COLUMNS = ("val_accuracy", "train_loss", "val_loss")
TAIL_SHARE = 0.1


def read_curve(path: Path) -> pd.DataFrame:
    """The epoch column and whichever of CURVE_COLUMNS the file has, as floats (NaN where a
    cell is empty); a file that is not such a table raises FerensError naming it."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:  # unreadable, empty, not UTF-8, ragged rows
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FerensError(f"{path}: cannot be read as a CSV table ({reason})") from None
    if "epoch" not in frame.columns:
        raise FerensError(f"{path}: has no epoch column (columns: "
                          f"{', '.join(map(str, frame.columns)) or 'none'})")
    columns = [c for c in CURVE_COLUMNS if c in frame.columns]
    if not columns:
        raise FerensError(f"{path}: has none of the columns {', '.join(CURVE_COLUMNS)}")
    if frame.empty:
        raise FerensError(f"{path}: has no epochs")
    for column in ("epoch", *columns):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna()
        if bad.any():
            raise FerensError(f"{path}: {column} {str(frame[column][bad].iloc[0])[:40]!r} in "
                              f"data row {int(np.flatnonzero(bad)[0]) + 1} is not a number")
        frame[column] = values.astype(float)
    epochs = frame["epoch"].to_numpy()
    if (not np.isfinite(epochs).all() or (epochs != np.round(epochs)).any()
            or (np.diff(epochs) <= 0).any()):
        raise FerensError(f"{path}: epochs are not increasing whole numbers")
    return frame[["epoch", *columns]]


def summarise(frame: pd.DataFrame) -> dict:
    """Best val epoch (the first on ties) and its val accuracy, the last epoch's val accuracy
    and its gap to the best, and `tail_gain`: the best val accuracy of the last
    ceil(TAIL_SHARE * epochs) epochs minus the best before them (> 0: still setting new bests).
    None where the file has no val accuracy or too few epochs."""
    n = len(frame)
    tail = max(1, math.ceil(TAIL_SHARE * n))
    out = {"n_epochs": n, "last_epoch": int(frame["epoch"].iloc[-1]), "tail_epochs": tail,
           "best_epoch": None, "best_val_accuracy": None, "last_val_accuracy": None,
           "last_minus_best": None, "tail_gain": None}
    if "val_accuracy" not in frame or frame["val_accuracy"].isna().all():
        return out
    val = frame["val_accuracy"].to_numpy()
    best = int(np.nanargmax(val))
    out["best_epoch"] = int(frame["epoch"].iloc[best])
    out["best_val_accuracy"] = float(val[best])
    if np.isfinite(val[-1]):
        out["last_val_accuracy"] = float(val[-1])
        out["last_minus_best"] = float(val[-1] - val[best])
    head, end = val[:-tail], val[-tail:]
    if np.isfinite(head).any() and np.isfinite(end).any():
        out["tail_gain"] = float(np.nanmax(end) - np.nanmax(head))
    return out


def run_curve(name: str, path: Path) -> dict:
    """One run's curve: per-epoch lists (NaN where the file has no value) and its summary."""
    frame = read_curve(path)
    return {"name": name, "file": str(path), "epoch": frame["epoch"].astype(int).tolist(),
            **{c: frame[c].tolist() for c in CURVE_COLUMNS if c in frame},
            **summarise(frame)}


def training_curves(runs: list[Run], names: list[str], skipped: list[str]) -> list[dict]:
    """The curve of every run with a metrics.csv, in run order. A file that cannot be read is
    left out with a line in `skipped` naming it and the problem; runs without one (ensembles,
    adjusted runs) are left out silently."""
    curves = []
    for name, run in zip(names, runs, strict=True):
        path = Path(run.path) / METRICS_FILE
        if not path.is_file():
            continue
        try:
            curves.append(run_curve(name, path))
        except FerensError as exc:
            skipped.append(f"the training curve of {name}: {exc}")
    return curves
