"""Ensembles over saved member predictions: mean, logit-mean, weighted, greedy and stack.

Everything is fitted on the val split only; test labels are read solely to report metrics.
An ensemble folder has the same layout as a member (see ``ferens.runs``), with
log-probabilities stored as ``logits``, so it can itself be a member of a further ensemble.
Its summary.json keeps every fitted parameter (``details``: weights, greedy counts, the full
stacker; ``temperatures``: each member's T), so ``fitted_parameters`` and ``apply_combination``
apply the ensemble to new member log-probabilities without refitting.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax, logsumexp
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ferens.errors import FerensError
from ferens.io import write_json
from ferens.outputs import check_replaceable, output_folder
from ferens.runs import (
    SPLITS,
    Predictions,
    Run,
    check_output_folder,
    label_set,
    load_predictions,
    load_run,
    row_positions,
    run_names,
    save_predictions,
    split_metrics,
)

METHODS = ("mean", "logit-mean", "weighted", "greedy", "stack")
GREEDY_METRICS = ("accuracy", "nll")
GREEDY_ROUNDS = 50
STACK_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
STACK_MAX_FOLDS = 5
STACK_FEATURE_FLOOR = -30.0
MISSING_CLASS_LOG_PROB = -50.0
TEMPERATURE_BOUNDS = (0.05, 20.0)
MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's largest seed


@dataclass
class EnsembleResult:
    """Combined val/test predictions plus what was fitted (weights, picks, stacker, temps)."""

    method: str
    members: list[str]
    val: Predictions
    test: Predictions
    details: dict = field(default_factory=dict)
    temperatures: dict[str, dict] | None = None

    @property
    def splits(self) -> dict[str, Predictions]:
        return {"val": self.val, "test": self.test}


def nll(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels."""
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def accuracy(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose argmax is the true label."""
    return float((log_probs.argmax(axis=1) == labels).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Scalar T minimising val NLL of softmax(logits / T), searched on log T within bounds."""
    logits = np.asarray(logits, dtype=np.float64)
    lo, hi = np.log(TEMPERATURE_BOUNDS)
    res = minimize_scalar(lambda t: nll(log_softmax(logits / np.exp(t), axis=1), labels),
                          bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def _with_temperature(preds: Predictions, temperature: float) -> Predictions:
    """The same predictions with logits divided by a temperature."""
    return Predictions(preds.logits.astype(np.float64) / temperature, preds.labels,
                       preds.row_ids, preds.class_names, preds.files)


def _aligned(preds: Predictions, ref: Predictions, who: str, split: str) -> Predictions:
    """Reorder a member's rows to the reference order; reject differing row ids or labels."""
    if preds.class_names != ref.class_names:
        raise FerensError(f"member {who}: {split} class names {list(preds.class_names)} "
                          f"differ from {list(ref.class_names)}")
    if len(np.unique(preds.row_ids)) != len(preds.row_ids):
        raise FerensError(f"member {who}: {split} row ids contain duplicates")
    if not np.array_equal(preds.row_ids, ref.row_ids):
        extra = np.setdiff1d(preds.row_ids, ref.row_ids)
        missing = np.setdiff1d(ref.row_ids, preds.row_ids)
        if len(extra) or len(missing):
            example = extra[0] if len(extra) else missing[0]
            raise FerensError(
                f"member {who}: {split} row ids differ from the first member "
                f"({len(extra)} extra, {len(missing)} missing, e.g. row id {example})")
        order = row_positions(preds.row_ids, ref.row_ids)
        preds = Predictions(preds.logits[order], preds.labels[order], preds.row_ids[order],
                            preds.class_names, None if preds.files is None else preds.files[order])
    diff = np.flatnonzero(preds.labels != ref.labels)
    if len(diff):
        raise FerensError(f"member {who}: {split} labels differ from the first member on "
                          f"{len(diff)} rows (e.g. row id {preds.row_ids[diff[0]]})")
    return preds


def check_members(members: list[Run]) -> list[Run]:
    """Validate members (count, rows, labels) and return them with rows in the first's order."""
    if len(members) < 2:
        raise FerensError(f"an ensemble needs at least 2 members, got {len(members)}")
    paths = [Path(m.path).resolve() for m in members]
    twice = sorted({str(m.path) for m, p in zip(members, paths, strict=True)
                    if paths.count(p) > 1})
    if twice:
        raise FerensError(f"member {twice[0]} is given twice; give each member once")
    labels = [label_set(m) for m in members]
    if len(set(labels)) > 1:
        raise FerensError("members are scored on different labels: " + ", ".join(
            f"{m.name} ({lab})" for m, lab in zip(members, labels, strict=True))
            + "; a --labels ferplus member has FER+-relabelled, filtered val and test rows, "
            "so it cannot be combined with FER2013-label runs")
    ref = members[0]
    names = run_names(members)
    for s in SPLITS:
        if len(np.unique(ref.splits[s].row_ids)) != len(ref.splits[s].row_ids):
            raise FerensError(f"member {names[0]} ({ref.path}): {s} row ids contain duplicates")
    checked = [ref]
    for run, name in zip(members[1:], names[1:], strict=True):
        splits = {s: _aligned(run.splits[s], ref.splits[s], f"{name} ({run.path})", s)
                  for s in SPLITS}
        checked.append(Run(run.name, run.path, run.config, run.summary, splits))
    return checked


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


def weighted_log_mean(log_probs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Log of the weighted average of member probabilities, computed in log space."""
    weights = np.asarray(weights, dtype=np.float64)
    stacked = np.stack(log_probs)
    keep = weights > 0
    b = weights[keep][:, None, None]
    return logsumexp(stacked[keep], axis=0, b=b) - np.log(weights[keep].sum())


def logit_mean(log_probs: list[np.ndarray]) -> np.ndarray:
    """Log-softmax of the mean member log-probabilities (a geometric mean of probabilities)."""
    return log_softmax(np.mean(log_probs, axis=0), axis=1)


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
    """Log-probabilities of a fitted stacker (parameters as saved by `fit_stack`) on members."""
    x = stack_features(member_log_probs, params.get("feature_floor", STACK_FEATURE_FLOOR))
    return _stacker_output(params, x, member_log_probs[0].shape[1])


def _fit_stacker(x: np.ndarray, y: np.ndarray, c: float) -> dict:
    """Multinomial logistic regression on standardised features, as JSON-ready parameters."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(x, y)
    scaler, logreg = model
    return {"C": c, "classes": logreg.classes_.tolist(), "feature_floor": STACK_FEATURE_FLOOR,
            "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
            "coef": logreg.coef_.tolist(), "intercept": logreg.intercept_.tolist()}


def _stack_folds(y: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified val folds for choosing C; empty when some class is too rare to split."""
    n_splits = min(STACK_MAX_FOLDS, int(np.bincount(y)[np.unique(y)].min()))
    if n_splits < 2:
        return []
    return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(y, y))


def _out_of_fold(x: np.ndarray, y: np.ndarray, c: float, folds: list, n_classes: int) -> np.ndarray:
    """Val log-probabilities where each row comes from a stacker that never saw it."""
    out = np.empty((len(y), n_classes))
    for train, held in folds:
        out[held] = _stacker_output(_fit_stacker(x[train], y[train], c), x[held], n_classes)
    return out


def fit_stack(val_log_probs: list[np.ndarray], labels: np.ndarray, test_log_probs: list[np.ndarray],
              seed: int = 0, c: float | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Stacker fitted on val (C by stratified CV NLL); returns out-of-fold val, test, details."""
    if len(np.unique(labels)) < 2:
        raise FerensError("stack needs at least two classes among the val labels")
    n_classes = val_log_probs[0].shape[1]
    x_val = stack_features(val_log_probs)
    folds = _stack_folds(labels, seed)
    cv_nll: dict[str, float] = {}
    oof = None
    if folds:
        grid = STACK_C_GRID if c is None else (c,)
        candidates = {cc: _out_of_fold(x_val, labels, cc, folds, n_classes) for cc in grid}
        cv_nll = {str(cc): nll(lp, labels) for cc, lp in candidates.items()}
        c = min(candidates, key=lambda cc: nll(candidates[cc], labels))
        oof = candidates[c]
    c = 1.0 if c is None else c
    stacker = _fit_stacker(x_val, labels, c)
    if oof is None:
        oof = _stacker_output(stacker, x_val, n_classes)
    details = {"C": c, "C_grid": list(STACK_C_GRID), "cv_folds": len(folds), "cv_nll": cv_nll,
               "val_predictions": "out-of-fold" if folds else "in-sample",
               "features": "standardised member log-probabilities, member-major",
               "stacker": stacker}
    return oof, apply_stacker(stacker, test_log_probs), details


def apply_combination(method: str, params: dict, member_log_probs: list[np.ndarray]) -> np.ndarray:
    """Combined log-probabilities of a fitted method; `params` as from `fitted_parameters`."""
    if method in ("mean", "weighted", "greedy"):
        return weighted_log_mean(member_log_probs, params["weights"])
    if method == "logit-mean":
        return logit_mean(member_log_probs)
    if method == "stack":
        return apply_stacker(params["stacker"], member_log_probs)
    raise FerensError(f"unknown ensemble method {method!r}; choose one of {', '.join(METHODS)}")


def fitted_parameters(method: str, details: dict, names: list[str]) -> dict:
    """What `apply_combination` needs, read from a saved ensemble's summary details."""
    if method == "mean":
        return {"weights": [1.0 / len(names)] * len(names)}
    if method == "logit-mean":
        return {}
    key = {"weighted": "weights", "greedy": "counts"}.get(method)
    if key:
        if set(details.get(key, {})) != set(names):
            raise FerensError(f"details.{key} does not list every member")
        return {"weights": [float(details[key][n]) for n in names]}
    if method == "stack":
        if "stacker" not in details:
            raise FerensError("details hold no fitted stacker (written by an older ferens); "
                              "rebuild the ensemble with `ferens ensemble`")
        return {"stacker": details["stacker"]}
    raise FerensError(f"unknown ensemble method {method!r}; choose one of {', '.join(METHODS)}")


def _combine_log_probs(method: str, val_lp: list[np.ndarray], test_lp: list[np.ndarray],
                       labels: np.ndarray, names: list[str], seed: int, greedy_metric: str,
                       stack_c: float | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fit `method` on val log-probabilities of any number of members; apply to val and test."""
    if method == "stack":
        return fit_stack(val_lp, labels, test_lp, seed=seed, c=stack_c)
    details: dict = {}
    if method == "weighted":
        w = fit_simplex_weights(val_lp, labels)
        details = {"weights": {n: float(x) for n, x in zip(names, w, strict=True)}}
    elif method == "greedy":
        picks = greedy_selection(val_lp, labels, greedy_metric)
        counts = np.bincount(picks, minlength=len(val_lp))
        details = {"metric": greedy_metric, "picks": [names[p] for p in picks],
                   "counts": {n: int(k) for n, k in zip(names, counts, strict=True)}}
    params = fitted_parameters(method, details, names)
    return (apply_combination(method, params, val_lp),
            apply_combination(method, params, test_lp), details)


def _check_method(method: str, greedy_metric: str, seed: int = 0) -> None:
    """Reject unknown methods and seeds the stacker's folds cannot use before any work."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise FerensError(f"--seed {seed!r}: expected a whole number from 0 to {MAX_SEED}")
    if method not in METHODS:
        raise FerensError(f"unknown ensemble method {method!r}; choose one of {', '.join(METHODS)}")
    if greedy_metric not in GREEDY_METRICS:
        raise FerensError(f"unknown greedy metric {greedy_metric!r}; "
                          f"choose one of {', '.join(GREEDY_METRICS)}")


def _calibrated(members: list[Run], names: list[str]) -> tuple[list[Run], dict[str, dict]]:
    """Members with a per-member temperature fitted on val applied to both splits."""
    out, report = [], {}
    for run, name in zip(members, names, strict=True):
        t = fit_temperature(run.val.logits, run.val.labels)
        splits = {s: _with_temperature(run.splits[s], t) for s in SPLITS}
        report[name] = {"T": t, "val_nll_before": nll(run.val.log_probs, run.val.labels),
                        "val_nll_after": nll(splits["val"].log_probs, run.val.labels)}
        out.append(Run(run.name, run.path, run.config, run.summary, splits))
    return out, report


def _as_predictions(log_probs: np.ndarray, ref: Predictions) -> Predictions:
    """Wrap combined log-probabilities with the reference split's labels and row ids."""
    return Predictions(log_probs.astype(np.float32), ref.labels, ref.row_ids, ref.class_names,
                       ref.files)


def _fit(method: str, members: list[Run], names: list[str], temps: dict | None, seed: int,
         greedy_metric: str) -> EnsembleResult:
    """Fit `method` on checked (and possibly calibrated) members and wrap the result."""
    ref = members[0]
    val, test, details = _combine_log_probs(
        method, [r.val.log_probs for r in members], [r.test.log_probs for r in members],
        ref.val.labels, names, seed, greedy_metric)
    return EnsembleResult(method, names, _as_predictions(val, ref.val),
                          _as_predictions(test, ref.test), details, temps)


def combine(members: list[Run], method: str = "mean", temperature: bool = False, seed: int = 0,
            greedy_metric: str = "accuracy") -> EnsembleResult:
    """Combine loaded runs in memory (fitting only on val) and return ensemble predictions."""
    _check_method(method, greedy_metric, seed)
    members = check_members(members)
    names = run_names(members)
    temps = None
    if temperature:
        members, temps = _calibrated(members, names)
    return _fit(method, members, names, temps, seed, greedy_metric)


def _short_metrics(preds: Predictions) -> dict:
    """Accuracy, macro-F1 and NLL of one split."""
    m = split_metrics(preds)
    return {k: m[k] for k in ("accuracy", "macro_f1", "nll")}


def leave_one_out(members: list[Run], result: EnsembleResult, seed: int = 0,
                  greedy_metric: str = "accuracy") -> dict[str, dict]:
    """Val/test accuracy of the ensemble refitted on val without each member, and its drop."""
    y_val, y_test = members[0].val.labels, members[0].test.labels
    full_test = accuracy(result.test.log_probs, y_test)
    stack_c = result.details.get("C") if result.method == "stack" else None
    out = {}
    for i, name in enumerate(result.members):
        rest = [j for j in range(len(members)) if j != i]
        val, test, _ = _combine_log_probs(
            result.method, [members[j].val.log_probs for j in rest],
            [members[j].test.log_probs for j in rest], y_val,
            [result.members[j] for j in rest], seed, greedy_metric, stack_c)
        out[name] = {"val_accuracy": accuracy(val, y_val), "test_accuracy": accuracy(test, y_test),
                     "test_accuracy_contribution": full_test - accuracy(test, y_test)}
    return out


def disagreement(members: list[Run], names: list[str]) -> list[dict]:
    """Pairwise fraction of rows on which two members' top predictions differ."""
    rows = []
    for (i, a), (j, b) in itertools.combinations(enumerate(names), 2):
        rows.append({"pair": [a, b], **{
            s: float((members[i].splits[s].predicted != members[j].splits[s].predicted).mean())
            for s in SPLITS}})
    return rows


def ferens_version() -> str:
    """Installed ferens version, or 'unknown' when running from an uninstalled checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ferens")
    except PackageNotFoundError:
        return "unknown"


def _summary(name: str, members: list[Run], result: EnsembleResult, loo: dict) -> dict:
    """The summary.json content (everything except the wall time)."""
    member_metrics = {n: {s: _short_metrics(r.splits[s]) for s in SPLITS}
                      for n, r in zip(result.members, members, strict=True)}
    best = max(result.members, key=lambda n: member_metrics[n]["val"]["accuracy"])
    test_acc = accuracy(result.test.log_probs, result.test.labels)
    best_test = member_metrics[best]["test"]["accuracy"]
    return {
        "name": name, "kind": "ensemble", "method": result.method, "members": result.members,
        "val": split_metrics(result.val), "test": split_metrics(result.test),
        "member_metrics": member_metrics,
        "best_member": {"name": best, "val_accuracy": member_metrics[best]["val"]["accuracy"],
                        "test_accuracy": best_test},
        "test_accuracy_gain_over_best_member": test_acc - best_test,
        "leave_one_out": loo,
        "disagreement": disagreement(members, result.members),
        "details": result.details,
        "temperatures": result.temperatures,
    }


def train_split_predictions(result: EnsembleResult, run_dirs: list[Path]) -> Predictions | None:
    """The fitted ensemble applied to its members' saved Training-split predictions (what a
    distilled member learns from), or None when a member has none. Nothing is fitted here."""
    paths = [d / "predictions" / "train.npz" for d in run_dirs]
    if not all(p.is_file() for p in paths):
        return None
    preds = [load_predictions(p) for p in paths]
    ref = preds[0]
    preds = [ref] + [_aligned(p, ref, f"{n} ({d})", "train")
                     for p, n, d in zip(preds[1:], result.members[1:], run_dirs[1:], strict=True)]
    if result.temperatures:
        preds = [_with_temperature(p, result.temperatures[n]["T"])
                 for p, n in zip(preds, result.members, strict=True)]
    params = fitted_parameters(result.method, result.details, result.members)
    return _as_predictions(apply_combination(result.method, params,
                                             [p.log_probs for p in preds]), ref)


def build_ensemble(run_dirs: list[str | Path], method: str = "mean",
                   out: str | Path = "ensembles/ensemble", temperature: bool = False,
                   seed: int = 0, greedy_metric: str = "accuracy") -> Run:
    """Load member folders, combine them on val, and write an ensemble folder like a member's."""
    start = time.perf_counter()
    run_dirs, out = [Path(d) for d in run_dirs], Path(out)
    _check_method(method, greedy_metric, seed)
    if len(run_dirs) < 2:
        raise FerensError(f"an ensemble needs at least 2 members, got {len(run_dirs)}")
    check_output_folder(out, run_dirs, "ensemble", "an ensemble", "member")
    check_replaceable(out, "ensemble")
    members = check_members([load_run(d) for d in run_dirs])
    names = run_names(members)
    with threadpool_limits(limits=1):  # small BLAS problems: extra threads only add overhead
        used, temps = _calibrated(members, names) if temperature else (members, None)
        result = _fit(method, used, names, temps, seed, greedy_metric)
        loo = leave_one_out(used, result, seed, greedy_metric)
    config = {"kind": "ensemble", "name": out.name, "method": method,
              "labels": label_set(members[0]),
              "members": [{"name": n, "path": str(d)}
                          for n, d in zip(result.members, run_dirs, strict=True)],
              "options": {"temperature": temperature, "seed": seed, "greedy_metric": greedy_metric},
              "ferens_version": ferens_version()}
    summary = _summary(out.name, members, result, loo)
    train = train_split_predictions(result, run_dirs)
    with output_folder(out, "ensemble") as tmp:
        for split, preds in result.splits.items():
            save_predictions(tmp / "predictions" / f"{split}.npz", preds)
        if train is not None:
            save_predictions(tmp / "predictions" / "train.npz", train)
        write_json(tmp / "config.json", config)
        summary["seconds"] = _previous_seconds(out, config, summary)
        if summary["seconds"] is None:
            summary["seconds"] = round(time.perf_counter() - start, 3)
        write_json(tmp / "summary.json", summary)
    return load_run(out)


def _previous_seconds(out: Path, config: dict, summary: dict) -> float | None:
    """The wall time saved in ``out`` when rebuilding it gives the same config and summary, so
    that rebuilding an unchanged ensemble (``ferens study --no-train``) rewrites identical files."""
    try:
        old_config = json.loads((out / "config.json").read_text())
        old_summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    seconds = old_summary.pop("seconds", None)
    same = old_config == json.loads(json.dumps(config)) and old_summary == json.loads(
        json.dumps(summary))
    return seconds if same and isinstance(seconds, (int, float)) else None
