"""Numbers for each study group: runs side by side per class, seed statistics, adjustments."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferens.report.groups import Group, seed_ensemble
from ferens.report.leaderboard import metric_value, ranking
from ferens.report.recipes import show
from ferens.report.significance import against_reference, mcnemar

SCORES = ("accuracy", "macro_f1", "balanced_accuracy")
SEED_SCORES = ("accuracy", "macro_f1", "balanced_accuracy", "g_mean", "nll", "ece")
MAX_VARYING_COLUMNS = 3


def describe_group(group: Group, runs: list[dict], recipes: list[dict], raw_names: list[str],
                   correct: np.ndarray | None, sort: str) -> dict:
    """One group as plain data: its rows, the best run in it, pooled or seed statistics."""
    members = [runs[i] for i in group.runs]
    best = group.runs[ranking(members, sort)[0]]
    tests = (against_reference(correct[group.runs], group.runs.index(best))
             if correct is not None else [None] * len(group.runs))
    show_other = group.varying if len(group.varying) <= MAX_VARYING_COLUMNS else []
    rows = []
    for i, value, test in zip(group.runs, group.values, tests, strict=True):
        rows.append({**_scores(runs[i]), "value": show(value),
                     "seed": recipes[i].get("seed"),
                     "other": {k: show(recipes[i].get(k)) for k in show_other},
                     "vs_best": test})
    out = {"field": group.field, "kind": group.kind, "title": group.title(),
           "context": {k: show(v) for k, v in group.context.items()},
           "varying": group.varying, "best": runs[best]["name"], "rows": rows}
    if group.kind == "seed":
        out["seed_stats"] = seed_statistics(members)
        ens = seed_ensemble(group, recipes, raw_names)
        out["seed_ensemble"] = None if ens is None else {
            **_scores(runs[ens]), **{m: metric_value(runs[ens], m) for m in SEED_SCORES}}
    elif group.kind == "field":
        out["pooled"] = _pooled(rows)
    return out


def seed_statistics(runs: list[dict]) -> dict:
    """Mean, sample sd (n - 1), min, max and range of each score and class recall over seeds."""
    series = {m: [metric_value(r, m) for r in runs] for m in SEED_SCORES}
    for c in runs[0]["per_class"]:
        series[f"recall {c}"] = [r["per_class"][c]["recall"] for r in runs]
    return {name: _spread(values) for name, values in series.items()}


def adjustment_pairs(runs: list[dict], configs: list[dict], correct: np.ndarray | None) -> list:
    """Each adjusted run against its source when the source is in the report too.

    The source is found by its path, else (a report run from another folder) by a unique
    folder name.
    """
    by_path = {Path(r["path"]).resolve(): i for i, r in enumerate(runs)}
    folders = [Path(r["path"]).name for r in runs]
    pairs = []
    for i, (run, config) in enumerate(zip(runs, configs, strict=True)):
        source = config.get("source")
        if run["kind"] != "adjusted" or not isinstance(source, str):
            continue
        j = by_path.get(Path(source).resolve())
        if j is None and folders.count(Path(source).name) == 1:
            j = folders.index(Path(source).name)
        if j is None or j == i:
            continue
        pairs.append({"name": run["name"], "source": runs[j]["name"],
                      "adjusted": _scores(run), "before": _scores(runs[j]),
                      "test": mcnemar(correct[i], correct[j]) if correct is not None else None})
    return pairs


def _scores(run: dict) -> dict:
    return {"name": run["name"], **{m: metric_value(run, m) for m in SCORES},
            "recall": {c: v["recall"] for c, v in run["per_class"].items()},
            "minutes": run.get("train_minutes")}


def _pooled(rows: list[dict]) -> list[dict]:
    """Mean and sd per value over its runs (seed replicates); empty when every value has one."""
    values = list(dict.fromkeys(r["value"] for r in rows))
    chunks = [[r for r in rows if r["value"] == v] for v in values]
    if all(len(c) == 1 for c in chunks):
        return []
    out = []
    for value, chunk in zip(values, chunks, strict=True):
        entry = {"value": value, "n": len(chunk), "runs": [r["name"] for r in chunk]}
        for m in SCORES:
            entry[m] = _spread([r[m] for r in chunk])
        entry["recall"] = {c: float(np.mean([r["recall"][c] for r in chunk]))
                           for c in chunk[0]["recall"]}
        out.append(entry)
    return out


def _spread(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    sd = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "sd": sd, "min": float(v.min()), "max": float(v.max()),
            "range": float(v.max() - v.min()), "n": int(len(v)), "values": v.tolist()}
