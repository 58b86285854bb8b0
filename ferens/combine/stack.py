"""The stacking combiner: multinomial logistic regression on the members' log-probabilities.

Fitted on val: C is chosen by stratified cross-validated NLL over ``STACK_C_GRID``
(scikit-learn's ``LogisticRegressionCV``), the stacker is then refitted on all of val, and the
val predictions it reports are out-of-fold (``cross_val_predict``: each row from a stacker
that never saw it). Test only ever goes through
``predict_log_proba``.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import log_softmax
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ferens.combine.combiners import Combiner, nll
from ferens.errors import FerensError

STACK_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
STACK_MAX_FOLDS = 5
STACK_FEATURE_FLOOR = -30.0
MISSING_CLASS_LOG_PROB = -50.0
LOG_UNDERFLOW = -745.0  # log of the smallest positive double
MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's largest seed


def stack_features(log_probs: list[np.ndarray], floor: float = STACK_FEATURE_FLOOR) -> np.ndarray:
    """Concatenated member log-probabilities, floored so near-zero probabilities stay bounded."""
    return np.maximum(np.concatenate(log_probs, axis=1), floor)


def _stacker_output(params: dict, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Stacker log-probabilities over all classes; classes unseen in training get a tiny mass."""
    z = (x - np.asarray(params["mean"])) / np.asarray(params["scale"])
    scores = z @ np.asarray(params["coef"]).T + np.asarray(params["intercept"])
    if scores.shape[1] == 1:
        scores = np.column_stack([np.zeros(len(scores)), scores[:, 0]])
    out = np.full((len(x), n_classes), MISSING_CLASS_LOG_PROB)
    out[:, params["classes"]] = log_softmax(scores, axis=1)
    return log_softmax(out, axis=1)


def apply_stacker(params: dict, member_log_probs: list[np.ndarray]) -> np.ndarray:
    """Log-probabilities of a fitted stacker (summary.json's ``details.stacker``) on members."""
    x = stack_features(member_log_probs, params.get("feature_floor", STACK_FEATURE_FLOOR))
    return _stacker_output(params, x, member_log_probs[0].shape[1])


def _fit_stacker(x: np.ndarray, y: np.ndarray, c: float) -> dict:
    """Multinomial logistic regression on standardised features, as JSON-ready parameters."""
    scaler, logreg = _pipeline(c).fit(x, y)
    return {"C": c, "classes": logreg.classes_.tolist(), "feature_floor": STACK_FEATURE_FLOOR,
            "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
            "coef": logreg.coef_.tolist(), "intercept": logreg.intercept_.tolist()}


def _stack_folds(y: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified val folds for choosing C; empty when some class is too rare to split."""
    n_splits = min(STACK_MAX_FOLDS, int(np.bincount(y)[np.unique(y)].min()))
    if n_splits < 2:
        return []
    return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(y, y))


def _pipeline(c: float):
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))


def _choose_c(x: np.ndarray, y: np.ndarray, grid: list[float], folds: list) -> dict[str, float]:
    """Each C's cross-validated NLL (the mean over folds), by scikit-learn's
    LogisticRegressionCV on the standardised features. Its refit is not used: averaging the
    folds' best C (refit=False) or its warm-started refit (refit=True) gave other test
    accuracies than the committed stacks; `_fit_stacker` refits the chosen C and reproduces
    them."""
    with warnings.catch_warnings():  # 1.9 announces 1.10's scores_ (handled) and l1_ratios
        warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn.linear_model")
        search = make_pipeline(StandardScaler(), LogisticRegressionCV(
            Cs=list(grid), cv=folds, scoring="neg_log_loss", refit=False, max_iter=2000)
        ).fit(x, y)[-1]
    scores = search.scores_  # {class: (folds, Cs)} before scikit-learn 1.10, then an array
    scores = np.asarray(next(iter(scores.values())) if isinstance(scores, dict) else scores)
    mean = scores.reshape(len(folds), len(grid)).mean(axis=0)
    return {str(float(c)): float(-m) for c, m in zip(search.Cs_, mean, strict=True)}


def _out_of_fold(x: np.ndarray, y: np.ndarray, c: float, folds: list, n_classes: int) -> np.ndarray:
    """Val log-probabilities where each row comes from a stacker that never saw it."""
    oof = cross_val_predict(_pipeline(c), x, y, cv=folds, method="predict_log_proba")
    out = np.full((len(y), n_classes), MISSING_CLASS_LOG_PROB)
    out[:, np.unique(y)] = np.maximum(oof, LOG_UNDERFLOW)  # log(0) where a probability underflowed
    return log_softmax(out, axis=1)


class StackCombiner(Combiner):
    """Logistic-regression stacker; ``C=None`` searches ``C_grid`` by cross-validated NLL."""

    method = "stack"
    params = ("seed", "C", "C_grid")
    fitted = ("C_", "classes_", "feature_floor_", "mean_", "scale_", "coef_", "intercept_",
              "cv_folds_", "cv_nll_")

    def __init__(self, seed: int = 0, C: float | None = None,
                 C_grid: tuple[float, ...] | list[float] = STACK_C_GRID):  # noqa: N803
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise FerensError(f"--seed {seed!r}: expected a whole number from 0 to {MAX_SEED}")
        if C is not None and not (isinstance(C, int | float) and np.isfinite(C) and C > 0):
            raise FerensError(f"stack C {C!r}: expected a positive number")
        self.seed, self.C, self.C_grid = seed, C, [float(c) for c in C_grid]

    def fit_predict(self, log_probs, labels) -> np.ndarray:
        self.fit(log_probs, labels)
        return self.oof_log_proba_

    def _fit(self, log_probs, labels):
        if len(np.unique(labels)) < 2:
            raise FerensError("stack needs at least two classes among the val labels")
        x = stack_features(log_probs)
        folds = _stack_folds(labels, self.seed)
        self.cv_nll_, oof, c = {}, None, self.C
        if folds:
            if c is None:
                self.cv_nll_ = _choose_c(x, labels, self.C_grid, folds)
                c = self.C_grid[int(np.argmin([self.cv_nll_[str(cc)] for cc in self.C_grid]))]
            oof = _out_of_fold(x, labels, c, folds, self.n_classes_)
            if self.C is not None:
                self.cv_nll_ = {str(c): float(np.mean([nll(oof[held], labels[held])
                                                       for _, held in folds]))}
        self._set_stacker(_fit_stacker(x, labels, 1.0 if c is None else c))
        self.cv_folds_ = len(folds)
        self.oof_log_proba_ = self._apply(log_probs) if oof is None else oof

    def _set_stacker(self, stacker: dict) -> None:
        self.C_, self.classes_ = stacker["C"], list(stacker["classes"])
        self.feature_floor_ = stacker.get("feature_floor", STACK_FEATURE_FLOOR)
        for key in ("mean", "scale", "coef", "intercept"):
            setattr(self, f"{key}_", np.asarray(stacker[key], dtype=np.float64))

    def stacker(self) -> dict:
        """The fitted stacker in summary.json's ``details.stacker`` (and bundle) format."""
        return {"C": self.C_, "classes": list(self.classes_), "feature_floor": self.feature_floor_,
                "mean": self.mean_.tolist(), "scale": self.scale_.tolist(),
                "coef": self.coef_.tolist(), "intercept": self.intercept_.tolist()}

    @classmethod
    def from_stacker(cls, stacker: dict, n_members: int) -> StackCombiner:
        """A fitted combiner from a saved ``details.stacker`` (older runs' summary.json)."""
        out = cls(C=None)
        try:
            out._set_stacker(stacker)
        except (KeyError, TypeError, ValueError) as exc:
            raise FerensError(f"damaged stacker ({exc})") from None
        out.n_members_, out.n_classes_ = n_members, None
        out.cv_folds_, out.cv_nll_ = None, {}
        return out

    def _apply(self, log_probs):
        return _stacker_output(self.stacker(), stack_features(log_probs, self.feature_floor_),
                               log_probs[0].shape[1])

    def details(self, names):
        return {"C": self.C_, "C_grid": list(self.C_grid), "cv_folds": self.cv_folds_,
                "cv_nll": self.cv_nll_,
                "val_predictions": "out-of-fold" if self.cv_folds_ else "in-sample",
                "features": "standardised member log-probabilities, member-major",
                "stacker": self.stacker()}


def fit_stack(val_log_probs: list[np.ndarray], labels: np.ndarray, test_log_probs: list[np.ndarray],
              seed: int = 0, c: float | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Stacker fitted on val (C by stratified CV NLL); returns out-of-fold val, test, details."""
    stacker = StackCombiner(seed=seed, C=c)
    oof = stacker.fit_predict(val_log_probs, labels)
    return oof, stacker.predict_log_proba(test_log_probs), stacker.details(
        [str(i) for i in range(len(val_log_probs))])
