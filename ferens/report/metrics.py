"""Headline metrics with bootstrap intervals, per-class scores, confusion matrices, calibration."""

from __future__ import annotations

import warnings

import numpy as np
from imblearn.metrics import geometric_mean_score
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    classification_report,
    confusion_matrix,
    f1_score,
    log_loss,
)

from ferens.runs import Predictions

N_BOOTSTRAP = 1000
CI_LEVEL = 0.95
ECE_BINS = 15
INTERVAL_METRICS = ("accuracy", "macro_f1", "balanced_accuracy", "g_mean")


def point_scores(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy, macro-F1, balanced accuracy and G-mean from scikit-learn / imbalanced-learn."""
    classes = list(range(num_classes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "accuracy": float(accuracy_score(labels, predicted)),
            "macro_f1": float(f1_score(labels, predicted, labels=classes, average="macro",
                                       zero_division=0)),
            "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
            "g_mean": float(geometric_mean_score(labels, predicted, average="multiclass")),
        }


def scores_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """The same four scores from confusion matrices (..., K, K), vectorised for the bootstrap.

    Conventions follow the library functions: F1 of a class with no true and no predicted rows
    is 0; balanced accuracy averages recall over classes present in the labels; G-mean takes
    the geometric mean of recall over classes present in labels or predictions.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    true_sum, pred_sum = cm.sum(axis=-1), cm.sum(axis=-2)
    total = cm.sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(true_sum + pred_sum > 0, 2 * tp / (true_sum + pred_sum), 0.0)
        recall = np.where(true_sum > 0, tp / true_sum, 0.0)
        present = true_sum > 0
        seen = present | (pred_sum > 0)
        log_recall = np.where(seen, np.log(recall), 0.0)
        g_mean = np.exp(log_recall.sum(axis=-1) / seen.sum(axis=-1))
    return {
        "accuracy": tp.sum(axis=-1) / total,
        "macro_f1": f1.mean(axis=-1),
        "balanced_accuracy": (recall * present).sum(axis=-1) / present.sum(axis=-1),
        "g_mean": g_mean,
    }


def bootstrap_confusions(labels: np.ndarray, predicted: np.ndarray, num_classes: int,
                         n_boot: int = N_BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """Confusion matrices (n_boot, K, K) of rows resampled with replacement, in one bincount."""
    n, k = len(labels), num_classes
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    codes = (labels * k + predicted)[idx] + (np.arange(n_boot) * k * k)[:, None]
    return np.bincount(codes.ravel(), minlength=n_boot * k * k).reshape(n_boot, k, k)


def bootstrap_intervals(labels: np.ndarray, predicted: np.ndarray, num_classes: int,
                        n_boot: int = N_BOOTSTRAP, seed: int = 0,
                        level: float = CI_LEVEL) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval for each of the four headline scores."""
    scores = scores_from_confusion(
        bootstrap_confusions(labels, predicted, num_classes, n_boot, seed))
    tail = 100 * (1 - level) / 2
    return {name: tuple(float(v) for v in np.nanpercentile(values, [tail, 100 - tail]))
            for name, values in scores.items()}


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Reliability curve over equal-width confidence bins (lo, hi] and the resulting ECE."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_conf, mean_acc = conf_sum / count, acc_sum / count
    ece = float(np.abs(acc_sum - conf_sum).sum() / max(len(labels), 1))
    return {"edges": edges.tolist(), "count": count.tolist(),
            "confidence": _nan_to_none(mean_conf), "accuracy": _nan_to_none(mean_acc),
            "ece": ece}


def headline(preds: Predictions, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """Headline numbers of one run: four scores with 95% bootstrap CIs, NLL, Brier and ECE."""
    k = len(preds.class_names)
    y, p, probs = preds.labels, preds.predicted, preds.probs
    points = point_scores(y, p, k)
    intervals = bootstrap_intervals(y, p, k, n_boot, seed)
    out: dict = {"n": int(len(y))}
    for name in INTERVAL_METRICS:
        low, high = intervals[name]
        out[name] = {"value": points[name], "ci_low": low, "ci_high": high}
    classes = list(range(k))
    out["nll"] = float(log_loss(y, probs, labels=classes))
    out["brier"] = float(brier_score_loss(y, probs, labels=classes, scale_by_half=False))
    out["ece"] = reliability(probs, y)["ece"]
    return out


def per_class(preds: Predictions) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class from scikit-learn's classification_report."""
    report = classification_report(
        preds.labels, preds.predicted, labels=list(range(len(preds.class_names))),
        target_names=list(preds.class_names), output_dict=True, zero_division=0)
    out = {}
    for i, name in enumerate(preds.class_names):
        support = int(report[name]["support"])
        hits = int(((preds.labels == i) & (preds.predicted == i)).sum())
        out[name] = {"precision": float(report[name]["precision"]),
                     "recall": float(report[name]["recall"]),
                     "recall_ci": recall_interval(hits, support),
                     "f1": float(report[name]["f1-score"]),
                     "support": support}
    return out


def recall_interval(hits: int, support: int, level: float = CI_LEVEL) -> list[float | None]:
    """Wilson score interval of a class recall (hits out of support); None without support."""
    if support == 0:
        return [None, None]
    ci = binomtest(hits, support).proportion_ci(confidence_level=level, method="wilson")
    return [float(ci.low), float(ci.high)]


def confusion(preds: Predictions) -> tuple[np.ndarray, np.ndarray]:
    """Confusion matrix (rows true, columns predicted) as counts and row-normalised."""
    cm = confusion_matrix(preds.labels, preds.predicted,
                          labels=list(range(len(preds.class_names))))
    rows = cm.sum(axis=1, keepdims=True)
    return cm, np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in values]
