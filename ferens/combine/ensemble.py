"""Ensembles over saved member predictions: mean, logit-mean, weighted, greedy and stack.

The orchestration of ``ferens ensemble``: load and align members, fit a combiner
(``ferens.combine.combiners``, ``ferens.combine.stack``) and optionally per-member temperatures
(``ferens.combine.temperature``) on the val split only, apply them to test (and to the members'
Training predictions), and write an ensemble folder with the same layout as a member (see
``ferens.runs``; log-probabilities stored as ``logits``, so it can itself be a member of a
further ensemble). What was fitted goes to its own file, ``fitted.json``
(``ferens.combine.fitted``); summary.json keeps the report's view of it (``details``,
``temperatures``), as older ferens wrote it. Test labels are read solely to report metrics.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from ferens.combine.combiners import (  # noqa: F401  (the plain-function API, re-exported)
    FITTED_FILE,
    GREEDY_METRICS,
    GREEDY_ROUNDS,
    METHODS,
    Combiner,
    accuracy,
    check_method,
    fit_simplex_weights,
    greedy_selection,
    logit_mean,
    nll,
    weighted_log_mean,
)
from ferens.combine.fitted import (
    FittedEnsemble,
    from_params,
    from_summary,
    load_fitted,
    make_combiner,
    to_params,
)
from ferens.combine.stack import (  # noqa: F401
    MAX_SEED,
    STACK_C_GRID,
    STACK_FEATURE_FLOOR,
    apply_stacker,
    fit_stack,
    stack_features,
)
from ferens.combine.temperature import (  # noqa: F401
    TEMPERATURE_BOUNDS,
    TemperatureScaler,
    fit_temperature,
)
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


@dataclass
class EnsembleResult:
    """Combined val/test predictions plus what was fitted (the combiner, the temperatures)."""

    method: str
    members: list[str]
    val: Predictions
    test: Predictions
    details: dict = field(default_factory=dict)
    temperatures: dict[str, dict] | None = None
    fitted: FittedEnsemble | None = None

    @property
    def splits(self) -> dict[str, Predictions]:
        return {"val": self.val, "test": self.test}


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


def apply_combination(method: str, params: dict, member_log_probs: list[np.ndarray]) -> np.ndarray:
    """Combined log-probabilities of a fitted method; `params` as from `fitted_parameters`
    (a bundle manifest's node format)."""
    return from_params(method, params, len(member_log_probs)).predict_log_proba(member_log_probs)


def fitted_parameters(method: str, details: dict, names: list[str]) -> dict:
    """What `apply_combination` needs, read from a saved ensemble's summary details."""
    return to_params(from_summary(method, details, names))


def _check_method(method: str, greedy_metric: str, seed: int = 0) -> None:
    """Reject unknown methods and seeds the stacker's folds cannot use before any work."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise FerensError(f"--seed {seed!r}: expected a whole number from 0 to {MAX_SEED}")
    check_method(method)
    if greedy_metric not in GREEDY_METRICS:
        raise FerensError(f"unknown greedy metric {greedy_metric!r}; "
                          f"choose one of {', '.join(GREEDY_METRICS)}")


def _as_predictions(log_probs: np.ndarray, ref: Predictions) -> Predictions:
    """Wrap combined log-probabilities with the reference split's labels and row ids."""
    return Predictions(log_probs.astype(np.float32), ref.labels, ref.row_ids, ref.class_names,
                       ref.files)


def _fit_and_apply(combiner: Combiner, val: list[np.ndarray], labels: np.ndarray,
                   test: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The one place a combiner meets labels: fitted on val (its val predictions as reported:
    out-of-fold for the stacker), then test only goes through predict_log_proba."""
    val_out = combiner.fit_predict(val, labels)
    return val_out, combiner.predict_log_proba(test)


def _member_log_probs(members: list[Run], scaler: TemperatureScaler | None
                      ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each member's val and test log-probabilities, temperature-scaled when `scaler` is given."""
    if scaler is None:
        return [r.val.log_probs for r in members], [r.test.log_probs for r in members]
    return (scaler.transform([r.val.logits for r in members]),
            scaler.transform([r.test.logits for r in members]))


def combine(members: list[Run], method: str = "mean", temperature: bool = False, seed: int = 0,
            greedy_metric: str = "accuracy") -> EnsembleResult:
    """Combine loaded runs in memory (fitting only on val) and return ensemble predictions."""
    _check_method(method, greedy_metric, seed)
    members = check_members(members)
    names = run_names(members)
    ref = members[0]
    y_val = ref.val.labels  # the only labels anything is fitted on
    scaler = TemperatureScaler().fit([r.val.logits for r in members], y_val) if temperature \
        else None
    val, test = _member_log_probs(members, scaler)
    combiner = make_combiner(method, seed, greedy_metric)
    val_out, test_out = _fit_and_apply(combiner, val, y_val, test)
    return EnsembleResult(method, names, _as_predictions(val_out, ref.val),
                          _as_predictions(test_out, ref.test), combiner.details(names),
                          None if scaler is None else scaler.report(names),
                          FittedEnsemble(names, combiner, scaler))


def _short_metrics(preds: Predictions) -> dict:
    """Accuracy, macro-F1 and NLL of one split."""
    m = split_metrics(preds)
    return {k: m[k] for k in ("accuracy", "macro_f1", "nll")}


def leave_one_out(members: list[Run], result: EnsembleResult, seed: int = 0,
                  greedy_metric: str = "accuracy") -> dict[str, dict]:
    """Val/test accuracy of the ensemble refitted on val without each member, and its drop.
    `members` are the checked members; the result's temperatures (if any) are applied first."""
    y_val, y_test = members[0].val.labels, members[0].test.labels
    val, test = _member_log_probs(members, result.fitted.temperature)
    full_test = accuracy(result.test.log_probs, y_test)
    stack_c = result.details.get("C") if result.method == "stack" else None
    out = {}
    for i, name in enumerate(result.members):
        rest = [j for j in range(len(members)) if j != i]
        combiner = make_combiner(result.method, seed, greedy_metric, stack_c)
        v, t = _fit_and_apply(combiner, [val[j] for j in rest], y_val, [test[j] for j in rest])
        out[name] = {"val_accuracy": accuracy(v, y_val), "test_accuracy": accuracy(t, y_test),
                     "test_accuracy_contribution": full_test - accuracy(t, y_test)}
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


def train_split_predictions(fitted: FittedEnsemble | EnsembleResult,
                            run_dirs: list[Path]) -> Predictions | None:
    """The fitted ensemble applied to its members' saved Training-split predictions (what a
    distilled member learns from), or None when a member has none. Nothing is fitted here."""
    if isinstance(fitted, EnsembleResult):
        fitted = fitted.fitted
    paths = [Path(d) / "predictions" / "train.npz" for d in run_dirs]
    if not all(p.is_file() for p in paths):
        return None
    preds = [load_predictions(p) for p in paths]
    ref = preds[0]
    preds = [ref] + [_aligned(p, ref, f"{n} ({d})", "train")
                     for p, n, d in zip(preds[1:], fitted.members[1:], run_dirs[1:], strict=True)]
    return _as_predictions(fitted.predict_log_proba([p.logits for p in preds]), ref)


def apply_fitted(run_dir: str | Path, member_logits: list[np.ndarray]) -> np.ndarray:
    """A saved ensemble (its fitted.json, or an older run's summary.json) applied to new
    member logits, given in the order of its config's members."""
    fitted = load_fitted(run_dir)
    if not isinstance(fitted, FittedEnsemble):
        raise FerensError(f"{run_dir}: not an ensemble")
    return fitted.predict_log_proba(member_logits)


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
    with threadpool_limits(limits=1):  # small BLAS problems: extra threads only add overhead
        result = combine(members, method, temperature, seed, greedy_metric)
        loo = leave_one_out(members, result, seed, greedy_metric)
    config = {"kind": "ensemble", "name": out.name, "method": method,
              "labels": label_set(members[0]),
              "members": [{"name": n, "path": str(d)}
                          for n, d in zip(result.members, run_dirs, strict=True)],
              "options": {"temperature": temperature, "seed": seed, "greedy_metric": greedy_metric},
              "ferens_version": ferens_version(), "fitted": FITTED_FILE}
    summary = _summary(out.name, members, result, loo)
    fitted = json.loads(json.dumps(result.fitted.to_dict()))
    # the Training predictions come from the fit as saved, as every later use reads it
    train = train_split_predictions(FittedEnsemble.from_dict(fitted), run_dirs)
    with output_folder(out, "ensemble") as tmp:
        for split, preds in result.splits.items():
            save_predictions(tmp / "predictions" / f"{split}.npz", preds)
        if train is not None:
            save_predictions(tmp / "predictions" / "train.npz", train)
        write_json(tmp / "config.json", config)
        write_json(tmp / FITTED_FILE, fitted)
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
    new_config = json.loads(json.dumps(config))
    for c in (old_config, new_config):  # a run older than fitted.json rebuilt: same fit
        c.pop("fitted", None)
    same = old_config == new_config and old_summary == json.loads(json.dumps(summary))
    return seconds if same and isinstance(seconds, (int, float)) else None
