"""Ensemble combiners in scikit-learn's style: ``fit`` on val, ``predict_log_proba`` anywhere.

    >>> from ferens.combine.combiners import make_combiner, combiner_from_dict
    >>> c = make_combiner("weighted").fit(val_log_probs, val_labels)    # doctest: +SKIP
    >>> test = c.predict_log_proba(test_log_probs)                      # doctest: +SKIP
    >>> same = combiner_from_dict(c.to_dict())                          # doctest: +SKIP

Inputs are member log-probabilities: a list of (N, K) arrays, one per member, or one (M, N, K)
array. ``fit`` is the only method that takes labels, so what a combiner learns can only come
from the split it is fitted on (val); applying it (``predict_log_proba``) never sees labels.
Fitted state lives in trailing-underscore attributes (``weights_``, ``picks_``, ``coef_``...);
``to_dict``/``from_dict`` round-trip it through JSON exactly (``fitted.json``, see
``ferens.combine.fitted``). The stacker is in ``ferens.combine.stack``; `make_combiner`
and `combiner_from_dict` (in ``ferens.combine.fitted``) pick the class for a method name.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, logsumexp

from ferens.errors import FerensError

METHODS = ("mean", "logit-mean", "weighted", "greedy", "stack")
GREEDY_METRICS = ("accuracy", "nll")
GREEDY_ROUNDS = 50
FITTED_FILE = "fitted.json"  # a fitted run's parameters, next to summary.json
FITTED_FORMAT = 1


def nll(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels."""
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def accuracy(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose argmax is the true label."""
    return float((log_probs.argmax(axis=1) == labels).mean())


def check_log_probs(log_probs, n_members: int | None = None,
                    n_classes: int | None = None) -> list[np.ndarray]:
    """Member log-probabilities as a list of float64 (N, K) arrays of one shape, all finite."""
    if isinstance(log_probs, np.ndarray):
        if log_probs.ndim != 3:
            raise FerensError(f"member log-probabilities: expected a list of (N, K) arrays or "
                              f"one (M, N, K) array, got shape {log_probs.shape}")
        log_probs = list(log_probs)
    arrays = [np.asarray(a, dtype=np.float64) for a in log_probs]
    if not arrays:
        raise FerensError("member log-probabilities: no members given")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1 or arrays[0].ndim != 2 or 0 in arrays[0].shape:
        raise FerensError(f"member log-probabilities: expected (N, K) arrays of one shape, got "
                          f"{sorted(shapes)}")
    if n_members is not None and len(arrays) != n_members:
        raise FerensError(f"fitted on {n_members} members, given {len(arrays)}")
    if n_classes is not None and arrays[0].shape[1] != n_classes:
        raise FerensError(f"fitted on {n_classes} classes, given {arrays[0].shape[1]}")
    for i, a in enumerate(arrays):
        if not np.isfinite(a).all():
            raise FerensError(f"member {i}: log-probabilities contain NaN or infinity")
    return arrays


def check_labels(labels, n_rows: int, n_classes: int) -> np.ndarray:
    """Integer class labels, one per row, each a class index."""
    y = np.asarray(labels)
    if y.shape != (n_rows,):
        raise FerensError(f"labels: expected {n_rows} labels, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise FerensError(f"labels: expected integer class indices, got {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise FerensError(f"labels: class indices must be 0..{n_classes - 1}")
    return y.astype(np.int64)


def weighted_log_mean(log_probs: list[np.ndarray], weights) -> np.ndarray:
    """Log of the weighted average of member probabilities, computed in log space."""
    weights = np.asarray(weights, dtype=np.float64)
    stacked = np.stack(log_probs)
    keep = weights > 0
    b = weights[keep][:, None, None]
    return logsumexp(stacked[keep], axis=0, b=b) - np.log(weights[keep].sum())


def logit_mean(log_probs: list[np.ndarray]) -> np.ndarray:
    """Log-softmax of the mean member log-probabilities (a geometric mean of probabilities)."""
    return log_softmax(np.mean(log_probs, axis=0), axis=1)


def _weights_from_logits(z: np.ndarray) -> np.ndarray:
    """Softmax parametrisation of simplex weights."""
    return np.exp(z - logsumexp(z))


def fit_simplex_weights(val_log_probs: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Member weights on the simplex minimising val NLL of the weighted probability average."""
    true_lp = np.stack([lp[np.arange(len(labels)), labels] for lp in val_log_probs], axis=1)

    def objective(z: np.ndarray) -> tuple[float, np.ndarray]:
        w = _weights_from_logits(z)
        joint = true_lp + np.log(np.maximum(w, 1e-300))
        row = logsumexp(joint, axis=1, keepdims=True)
        resp = np.exp(joint - row)
        return float(-row.mean()), -(resp.mean(axis=0) - w)

    z0 = np.zeros(len(val_log_probs))
    res = minimize(objective, z0, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return _weights_from_logits(res.x)


def _greedy_score(probs: np.ndarray, labels: np.ndarray, metric: str) -> tuple[float, ...]:
    """Hill-climbing score of averaged probabilities (higher is better); NLL breaks ties."""
    neg_nll = float(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-300)).mean())
    if metric == "accuracy":
        return float((probs.argmax(axis=1) == labels).mean()), neg_nll
    return (neg_nll,)


def greedy_selection(val_log_probs: list[np.ndarray], labels: np.ndarray,
                     metric: str = "accuracy", rounds: int = GREEDY_ROUNDS) -> list[int]:
    """Caruana et al. (2004) selection with replacement on val; returns the best pick sequence."""
    if metric not in GREEDY_METRICS:
        raise FerensError(f"unknown greedy metric {metric!r}; choose one of {GREEDY_METRICS}")
    probs = [np.exp(lp) for lp in val_log_probs]
    total = np.zeros_like(probs[0])
    picks: list[int] = []
    best_picks, best_score = picks, None
    for k in range(1, rounds + 1):
        trials = [_greedy_score((total + p) / k, labels, metric) for p in probs]
        choice = max(range(len(trials)), key=lambda m: trials[m])
        total += probs[choice]
        picks = picks + [choice]
        if best_score is None or trials[choice] > best_score:
            best_picks, best_score = picks, trials[choice]
    return best_picks


class Combiner:
    """Base class: validation, fit/apply and the JSON round trip; subclasses fill in
    ``_fit(log_probs, labels)`` (setting their fitted attributes) and ``_apply(log_probs)``."""

    method = ""
    params: tuple[str, ...] = ()  # constructor arguments, saved under "params"
    fitted: tuple[str, ...] = ()  # fitted attributes (trailing underscore), saved under "fitted"

    def fit(self, log_probs, labels) -> Combiner:
        """Fit on one split's member log-probabilities and its labels (val)."""
        arrays = check_log_probs(log_probs)
        y = check_labels(labels, len(arrays[0]), arrays[0].shape[1])
        self.n_members_, self.n_classes_ = len(arrays), arrays[0].shape[1]
        self._fit(arrays, y)
        return self

    def fit_predict(self, log_probs, labels) -> np.ndarray:
        """Fit, then the fitted split's predictions as reported (the stacker's are
        out-of-fold; every other method's are its predictions on that split)."""
        return self.fit(log_probs, labels).predict_log_proba(log_probs)

    def predict_log_proba(self, log_probs) -> np.ndarray:
        """Combined (N, K) log-probabilities of new member log-probabilities; no labels."""
        if not hasattr(self, "n_members_"):
            raise FerensError(f"the {self.method} combiner is not fitted; call fit first")
        return self._apply(check_log_probs(log_probs, self.n_members_, self.n_classes_))

    def predict_proba(self, log_probs) -> np.ndarray:
        return np.exp(self.predict_log_proba(log_probs))

    def to_dict(self) -> dict:
        """JSON-ready method, constructor params and fitted state (exact floats)."""
        if not hasattr(self, "n_members_"):
            raise FerensError(f"the {self.method} combiner is not fitted; nothing to save")
        return {"method": self.method, "params": {k: getattr(self, k) for k in self.params},
                "fitted": {k: _jsonable(getattr(self, k))
                           for k in ("n_members_", "n_classes_", *self.fitted)}}

    @classmethod
    def from_dict(cls, data: dict) -> Combiner:
        """The combiner `to_dict` saved, ready to apply."""
        if not isinstance(data, dict) or data.get("method") != cls.method:
            raise FerensError(f"not a saved {cls.method} combiner")
        try:
            out = cls(**data.get("params", {}))
            for key in ("n_members_", "n_classes_", *cls.fitted):
                setattr(out, key, _from_json(key, data["fitted"][key]))
        except (KeyError, TypeError) as exc:
            raise FerensError(f"saved {cls.method} combiner lacks {exc}") from None
        return out

    def details(self, names: list[str]) -> dict:
        """What summary.json's ``details`` reports about the fit (and older ferens read back)."""
        return {}

    def _fit(self, log_probs: list[np.ndarray], labels: np.ndarray) -> None:
        pass

    def _apply(self, log_probs: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError


def _jsonable(value):
    return value.tolist() if isinstance(value, np.ndarray) else value


ARRAYS = ("weights_", "coef_", "intercept_", "mean_", "scale_")


def _from_json(key: str, value):
    return np.asarray(value, dtype=np.float64) if key in ARRAYS else value


class MeanCombiner(Combiner):
    """The plain average of member probabilities."""

    method = "mean"
    fitted = ("weights_",)

    def _fit(self, log_probs, labels):
        self.weights_ = np.full(len(log_probs), 1.0 / len(log_probs))

    def _apply(self, log_probs):
        return weighted_log_mean(log_probs, self.weights_)


class LogitMeanCombiner(Combiner):
    """Softmax of the mean member log-probabilities (nothing to fit)."""

    method = "logit-mean"

    def _apply(self, log_probs):
        return logit_mean(log_probs)


class WeightedCombiner(MeanCombiner):
    """Probability average with simplex weights minimising the fitted split's NLL."""

    method = "weighted"

    def _fit(self, log_probs, labels):
        self.weights_ = fit_simplex_weights(log_probs, labels)

    def details(self, names):
        return {"weights": {n: float(x) for n, x in zip(names, self.weights_, strict=True)}}


class GreedyCombiner(MeanCombiner):
    """Caruana's greedy selection with replacement; weights are the pick counts."""

    method = "greedy"
    params = ("metric", "rounds")
    fitted = ("weights_", "picks_")

    def __init__(self, metric: str = "accuracy", rounds: int = GREEDY_ROUNDS):
        if metric not in GREEDY_METRICS:
            raise FerensError(f"unknown greedy metric {metric!r}; "
                              f"choose one of {', '.join(GREEDY_METRICS)}")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise FerensError(f"greedy rounds {rounds!r}: expected a whole number from 1")
        self.metric, self.rounds = metric, rounds

    def _fit(self, log_probs, labels):
        self.picks_ = greedy_selection(log_probs, labels, self.metric, self.rounds)
        self.weights_ = np.bincount(self.picks_, minlength=len(log_probs)).astype(np.float64)

    def details(self, names):
        return {"metric": self.metric, "picks": [names[p] for p in self.picks_],
                "counts": {n: int(k) for n, k in zip(names, self.weights_, strict=True)}}


def check_method(method: str) -> None:
    if method not in METHODS:
        raise FerensError(f"unknown ensemble method {method!r}; choose one of {', '.join(METHODS)}")
