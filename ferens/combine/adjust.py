"""Post-hoc logit adjustment: more rare-class recall from a finished run, without retraining.

Shifts a run's log-probabilities by ``-tau * log(prior)`` (Menon et al., "Long-tail learning
via logit adjustment", ICLR 2021). The prior is the class frequency of the val labels and
``tau`` is chosen on val only; the result is a run folder that ``ferens ensemble``,
``ferens report`` and ``ferens export`` accept like any other.

    >>> from ferens.combine.adjust import adjust_run
    >>> run = adjust_run("runs/member", out="adjusted/member", select="accuracy-budget")
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from scipy.special import log_softmax
from sklearn.metrics import f1_score

from ferens.combine.combiners import FITTED_FILE, FITTED_FORMAT
from ferens.errors import FerensError
from ferens.io import write_json
from ferens.outputs import check_replaceable, output_folder
from ferens.runs import (
    SPLITS,
    Predictions,
    Run,
    check_output_folder,
    label_set,
    load_run,
    save_predictions,
    split_metrics,
)

SELECT = ("macro-f1", "accuracy-budget")
TAU_GRID = tuple(round(0.05 * i, 2) for i in range(41))  # 0, 0.05, ..., 2.0


def class_log_prior(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """log of each class's frequency in ``labels``; every class must occur."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    missing = [c for c in range(n_classes) if counts[c] == 0]
    if missing:
        raise FerensError(f"val labels lack class(es) {missing}: cannot estimate the class prior")
    return np.log(counts / counts.sum())


def adjusted_log_probs(log_probs: np.ndarray, log_prior: np.ndarray, tau: float) -> np.ndarray:
    """Log-probabilities with every class's score lowered by ``tau * log(prior)``."""
    return log_softmax(np.asarray(log_probs, np.float64) - tau * np.asarray(log_prior), axis=1)


def check_options(select: str, max_accuracy_loss: float) -> None:
    """A known selection rule and an accuracy budget from 0 to 1 (a share of val accuracy)."""
    if select not in SELECT:
        raise FerensError(f"unknown tau selection {select!r}; choose one of {list(SELECT)}")
    if (isinstance(max_accuracy_loss, bool) or not isinstance(max_accuracy_loss, int | float)
            or not math.isfinite(max_accuracy_loss) or not 0 <= max_accuracy_loss <= 1):
        raise FerensError(f"--max-accuracy-loss {max_accuracy_loss!r}: expected a number from "
                          "0 to 1 (0.01 = one point of val accuracy)")


def choose_tau(log_probs: np.ndarray, labels: np.ndarray, log_prior: np.ndarray,
               select: str = "macro-f1", max_accuracy_loss: float = 0.01,
               grid: tuple[float, ...] = TAU_GRID) -> tuple[float, list[dict]]:
    """``tau`` on one split's predictions, and the accuracy/macro-F1 of every grid value.

    ``macro-f1`` takes the best macro-F1 (the smallest tau on ties). ``accuracy-budget`` takes
    the largest tau such that it and every smaller one keep accuracy within
    ``max_accuracy_loss`` of tau = 0, i.e. the most rare-class recall the budget allows.
    """
    check_options(select, max_accuracy_loss)
    if grid[0] != 0 or list(grid) != sorted(grid):
        raise FerensError("the tau grid must be increasing and start at 0")
    labels_all = list(range(log_probs.shape[1]))
    rows = []
    for tau in grid:
        predicted = adjusted_log_probs(log_probs, log_prior, tau).argmax(axis=1)
        rows.append({"tau": float(tau), "accuracy": float((predicted == labels).mean()),
                     "macro_f1": float(f1_score(labels, predicted, labels=labels_all,
                                                average="macro", zero_division=0))})
    if select == "macro-f1":
        return max(rows, key=lambda r: (r["macro_f1"], -r["tau"]))["tau"], rows
    floor = rows[0]["accuracy"] - max_accuracy_loss - 1e-12
    chosen = 0.0
    for row in rows:
        if row["accuracy"] < floor:
            break
        chosen = row["tau"]
    return chosen, rows


class LogitAdjuster:
    """Logit adjustment as a fitted transform: ``fit`` on val sets ``log_prior_`` (the val
    class frequencies) and ``tau_`` (given, or chosen by ``select``); ``predict_log_proba``
    applies them to any split's log-probabilities without labels."""

    def __init__(self, tau: float | None = None, select: str = "macro-f1",
                 max_accuracy_loss: float = 0.01):
        if tau is not None and (isinstance(tau, bool) or not isinstance(tau, int | float)
                                or not (np.isfinite(tau) and 0 <= tau <= 100)):
            raise FerensError(f"--tau {tau}: expected a finite number from 0 to 100")
        check_options(select, max_accuracy_loss)
        self.tau, self.select, self.max_accuracy_loss = tau, select, max_accuracy_loss

    def fit(self, log_probs: np.ndarray, labels: np.ndarray) -> LogitAdjuster:
        log_probs = np.asarray(log_probs, dtype=np.float64)
        if log_probs.ndim != 2 or not np.isfinite(log_probs).all():
            raise FerensError("logit adjustment: expected finite (N, K) log-probabilities")
        labels = np.asarray(labels)
        if labels.shape != (len(log_probs),) or not np.issubdtype(labels.dtype, np.integer):
            raise FerensError(f"logit adjustment: expected {len(log_probs)} integer labels")
        self.log_prior_ = class_log_prior(labels, log_probs.shape[1])
        chosen, self.tau_grid_ = choose_tau(log_probs, labels, self.log_prior_, self.select,
                                            self.max_accuracy_loss)
        self.tau_ = chosen if self.tau is None else float(self.tau)
        return self

    def predict_log_proba(self, log_probs: np.ndarray) -> np.ndarray:
        if not hasattr(self, "tau_"):
            raise FerensError("the logit adjuster is not fitted; call fit first")
        log_probs = np.asarray(log_probs, dtype=np.float64)
        if log_probs.ndim != 2 or log_probs.shape[1] != len(self.log_prior_):
            raise FerensError(f"logit adjustment: fitted on {len(self.log_prior_)} classes, "
                              f"given shape {log_probs.shape}")
        return adjusted_log_probs(log_probs, self.log_prior_, self.tau_)

    def to_dict(self) -> dict:
        return {"method": "logit-adjustment",
                "params": {"tau": self.tau, "select": self.select,
                           "max_accuracy_loss": self.max_accuracy_loss},
                "fitted": {"tau_": self.tau_, "log_prior_": self.log_prior_.tolist(),
                           "prior_from": "val labels"}}

    @classmethod
    def from_dict(cls, data: dict) -> LogitAdjuster:
        try:
            out = cls(**data["params"])
            out.tau_ = float(data["fitted"]["tau_"])
            out.log_prior_ = np.asarray(data["fitted"]["log_prior_"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise FerensError(f"saved logit adjustment lacks {exc}") from None
        return out

    @classmethod
    def from_config(cls, config: dict) -> LogitAdjuster:
        """The adjustment an adjusted run's config.json records (runs older than fitted.json)."""
        try:
            out = cls(tau=float(config["tau"]))
            out.tau_, out.log_prior_ = out.tau, np.asarray(config["log_prior"], np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise FerensError(f"config.json lacks the adjustment's {exc}") from None
        return out


def adjust_run(run_dir: str | Path, out: str | Path, tau: float | None = None,
               select: str = "macro-f1", max_accuracy_loss: float = 0.01) -> Run:
    """Write ``out``: ``run_dir`` logit-adjusted with a given ``tau`` or one chosen on val."""
    start = time.perf_counter()
    run_dir, out = Path(run_dir), Path(out)
    adjuster = LogitAdjuster(tau, select, max_accuracy_loss)
    check_output_folder(out, [run_dir], "adjusted", "an adjusted run", "source run")
    check_replaceable(out, "adjusted")
    source = load_run(run_dir)
    adjuster.fit(source.val.log_probs, source.val.labels)  # val only: test is only transformed
    adjusted = {
        s: Predictions(adjuster.predict_log_proba(p.log_probs).astype(np.float32),
                       p.labels, p.row_ids, p.class_names, p.files)
        for s, p in source.splits.items()}
    with output_folder(out, "adjusted") as tmp:
        write_json(tmp / FITTED_FILE, {"format": FITTED_FORMAT, "kind": "adjusted",
                                        "adjuster": adjuster.to_dict()})
        _write_adjusted(tmp, out.name, run_dir, source, adjusted, adjuster,
                        "fixed" if tau is not None else select, max_accuracy_loss, start)
    return load_run(out)


def _write_adjusted(folder: Path, name: str, run_dir: Path, source, adjusted: dict,
                    adjuster: LogitAdjuster, select: str, max_accuracy_loss: float,
                    start: float) -> None:
    for split in SPLITS:
        save_predictions(folder / "predictions" / f"{split}.npz", adjusted[split])
    write_json(folder / "config.json", {
        "kind": "adjusted", "name": name, "source": str(run_dir), "labels": label_set(source),
        "tau": adjuster.tau_, "log_prior": adjuster.log_prior_.tolist(),
        "prior_from": "val labels", "select": select, "max_accuracy_loss": max_accuracy_loss,
        "fitted": FITTED_FILE})
    write_json(folder / "summary.json", {
        "name": name, "kind": "adjusted", "source": source.name, "tau": adjuster.tau_,
        "val": split_metrics(adjusted["val"]), "test": split_metrics(adjusted["test"]),
        "source_metrics": {s: split_metrics(p) for s, p in source.splits.items()},
        "val_tau_grid": adjuster.tau_grid_, "seconds": round(time.perf_counter() - start, 3)})
