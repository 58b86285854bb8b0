"""The leaderboard: every run ranked by one metric, each tested against the best run."""

from __future__ import annotations

import math

import numpy as np

from ferens.errors import FerensError
from ferens.report.significance import against_reference

# metric -> True when higher is better
SORT_KEYS = {"accuracy": True, "macro_f1": True, "balanced_accuracy": True, "g_mean": True,
             "nll": False, "brier": False, "ece": False}
FOCUS_CLASSES = ("Disgust", "Fear")


def check_sort(sort: str) -> str:
    if sort not in SORT_KEYS:
        raise FerensError(f"unknown --sort {sort!r}; expected one of {list(SORT_KEYS)}")
    return sort


def metric_value(run: dict, metric: str) -> float:
    """A headline number of a run's metrics (interval metrics give their point value)."""
    value = run["headline"][metric]
    value = value["value"] if isinstance(value, dict) else value
    return float("nan") if value is None else float(value)


def ranking(runs: list[dict], sort: str) -> list[int]:
    """Run indices best first by `sort`; ties keep the given order, missing values go last."""
    check_sort(sort)
    higher = SORT_KEYS[sort]

    def key(i: int) -> tuple:
        v = metric_value(runs[i], sort)
        return (math.isnan(v), -v if higher else v, i)

    return sorted(range(len(runs)), key=key)


def leaderboard(runs: list[dict], sort: str, correct: np.ndarray | None,
                class_names: list[str]) -> dict:
    """Rows best first: the sort metric with its interval, other scores, Disgust and Fear
    recall, and McNemar's test against the best run (q over the runs tested against it).

    `correct` is runs x common rows (True where a run is right), in `runs` order.
    """
    order = ranking(runs, sort)
    best = order[0]
    tests = against_reference(correct, best) if correct is not None else [None] * len(runs)
    best_value = metric_value(runs[best], sort)
    rows = []
    for rank, i in enumerate(order, 1):
        run = runs[i]
        h = run["headline"][sort]
        rows.append({
            "rank": rank, "name": run["name"], "kind": run["kind"],
            "value": metric_value(run, sort),
            "ci": [h["ci_low"], h["ci_high"]] if isinstance(h, dict) else None,
            **{m: metric_value(run, m) for m in ("accuracy", "macro_f1", "balanced_accuracy")},
            "recall": {c: run["per_class"][c]["recall"] for c in FOCUS_CLASSES
                       if c in class_names},
            "diff_vs_best": metric_value(run, sort) - best_value,
            "vs_best": tests[i],
        })
    return {"sort": sort, "higher_is_better": SORT_KEYS[sort], "best": runs[best]["name"],
            "n_common": None if correct is None else int(correct.shape[1]), "rows": rows}
