"""`ferens report`: a leaderboard, study groups, per-run metrics with bootstrap CIs, an error
taxonomy, calibration and training curves.

    >>> from ferens.report.build import write_report
    >>> metrics = write_report(["runs/*", "ensembles/stack"], out="reports/ab")  # doctest: +SKIP

writes ``report.html`` (self-contained), ``report.md``, ``metrics.json`` and the PNG plots.
For notebooks, `compute_metrics` returns the same numbers from loaded `Run` objects, and
`ferens.report.metrics` / `.taxonomy` / `.duplicates` / `.groups` / `.curves` hold the pieces.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ferens.classes import CLASS_NAMES
from ferens.errors import FerensError
from ferens.io import write_json
from ferens.outputs import check_replaceable, output_folder
from ferens.report.comparisons import adjustment_pairs, describe_group
from ferens.report.curves import training_curves
from ferens.report.duplicates import duplicate_analysis, label_mismatch
from ferens.report.groups import find_groups
from ferens.report.leaderboard import check_sort, leaderboard
from ferens.report.metrics import (
    CI_LEVEL,
    ECE_BINS,
    N_BOOTSTRAP,
    confusion,
    headline,
    per_class,
    reliability,
)
from ferens.report.recipes import recipe, run_kind
from ferens.report.selection import detailed_runs, expand_run_paths
from ferens.report.taxonomy import (
    FERPLUS_RULES,
    FerPlusReference,
    common_rows,
    compare_runs,
    confused_pairs,
    error_examples,
    ferplus_analysis,
    pair_examples,
)
from ferens.runs import Predictions, Run, load_run, row_positions, run_names

SPLITS = ("test", "val")
TOP_RUNS = 6
MISALIGNED_SHARE = 0.05
SKIP_NO_DATA = ("thumbnails (example faces for confused pairs, confident and ambiguous errors) "
                "and the exact-duplicate analysis: no --data given")
SKIP_NO_FERPLUS = "the FER+ noise taxonomy and FER+ re-scoring: no --ferplus given"


def load_runs(run_dirs: list[str | Path]) -> list[Run]:
    """Load run folders (paths or glob patterns), failing with a FerensError if none given."""
    if not run_dirs:
        raise FerensError("no run folders given")
    return [load_run(d) for d in expand_run_paths(run_dirs)]


def compute_metrics(runs: list[Run], split: str = "test",
                    ferplus: FerPlusReference | pd.DataFrame | None = None, dataset=None,
                    seed: int = 0, n_boot: int = N_BOOTSTRAP, sort: str = "accuracy",
                    group: list[str] | tuple[str, ...] = (), top: int = TOP_RUNS,
                    show: list[str] | tuple[str, ...] = ()) -> dict:
    """Every number of the report for loaded runs; FER+ votes and the dataset are optional.

    `ferplus` is a FerPlusReference or the frame from `ferens.data.fer2013.read_ferplus_votes`;
    `dataset` is a `ferens.data.fer2013.FerDataset` (the whole file, so Training copies are found).
    `sort` orders the leaderboard, `group` forces study groups on config fields, and the
    `top` runs of the leaderboard plus those whose name matches a glob in `show` get the
    detailed per-run sections. Runs with a metrics.csv (trained members) get a training curve
    in "curves"; one that cannot be read is listed in "skipped" instead.
    """
    if not runs:
        raise FerensError("no runs to report on")
    check_sort(sort)
    if isinstance(ferplus, pd.DataFrame):
        ferplus = FerPlusReference.from_votes(ferplus)
    if split not in SPLITS:
        raise FerensError(f"unknown split {split!r}; expected one of {SPLITS}")
    names = run_names(runs)
    preds = [r.splits[split] for r in runs]
    class_names = preds[0].class_names
    for run, p in zip(runs, preds, strict=True):
        if p.class_names != class_names:
            raise FerensError(f"{run.path}: classes {p.class_names} differ from {class_names}")
    skipped, notes = [], []
    if dataset is not None and tuple(dataset.class_names) != tuple(class_names):
        skipped.append(f"thumbnails and the exact-duplicate analysis: the data at "
                       f"{dataset.source} has the classes {list(dataset.class_names)}, the "
                       f"runs predict {list(class_names)} (give --data the runs' own data)")
        dataset = None
    elif dataset is not None:
        dataset = _check_alignment(dataset, preds, names, notes, skipped)
    else:
        skipped.append(SKIP_NO_DATA)
    if ferplus is not None and tuple(class_names) != CLASS_NAMES:
        skipped.append(f"the FER+ noise taxonomy and FER+ re-scoring: the runs predict "
                       f"{list(class_names)}, not FER2013's seven classes, and FER+ votes are "
                       "votes on FER2013's images, joined by fer2013.csv row")
        ferplus = None
    elif ferplus is None:
        skipped.append(SKIP_NO_FERPLUS)
    else:
        for run, p in zip(runs, preds, strict=True):
            ferplus.check_split(p.row_ids, split, str(run.path))
    run_entries = [run_metrics(name, run, p, ferplus, seed, n_boot)
                   for name, run, p in zip(names, runs, preds, strict=True)]
    curves = training_curves(runs, names, skipped)
    out = {
        "split": split, "seed": seed, "n_bootstrap": n_boot, "ci_level": CI_LEVEL,
        "ece_bins": ECE_BINS, "class_names": list(class_names),
        "skipped": skipped, "notes": notes,
        **study_overview(runs, run_entries, preds, sort, group, top, show),
        "runs": run_entries,
    }
    out["per_class_recall"] = {c: {r["name"]: r["per_class"][c]["recall"] for r in out["runs"]}
                               for c in class_names}
    out["comparison"] = compare_runs(preds, names) if len(runs) > 1 else None
    if out["comparison"] and out["comparison"]["n_common"] < max(len(p.labels) for p in preds):
        notes.append(f"Run comparison uses the {out['comparison']['n_common']} rows that every "
                     "run predicted with the same label.")
    out["ferplus"] = {"rules": FERPLUS_RULES} if ferplus is not None else None
    out["duplicates"] = duplicate_analysis(dataset, preds, names) if dataset is not None else None
    out["has_thumbnails"] = dataset is not None
    out["curves"] = curves
    return out


def study_overview(runs: list[Run], entries: list[dict], preds: list[Predictions], sort: str,
                   group: list[str] | tuple[str, ...], top: int,
                   show: list[str] | tuple[str, ...]) -> dict:
    """Leaderboard, study groups, adjusted-vs-source pairs and the runs shown in detail."""
    correct = None
    if len(preds) > 1:
        _, positions = common_rows(preds)
        correct = np.stack([p.predicted[pos] == p.labels[pos]
                            for p, pos in zip(preds, positions, strict=True)])
    board = leaderboard(entries, sort, correct, list(preds[0].class_names))
    recipes = [recipe(r.config, r.summary) for r in runs]
    raw_names = [r.name for r in runs]
    groups = [describe_group(g, entries, recipes, raw_names, correct, sort)
              for g in find_groups(recipes, list(group))]
    index = {e["name"]: i for i, e in enumerate(entries)}
    order = [index[row["name"]] for row in board["rows"]]
    names = [e["name"] for e in entries]
    return {
        "sort": sort, "top": top, "leaderboard": board, "groups": groups,
        "adjustments": adjustment_pairs(entries, [r.config for r in runs], correct),
        "detailed_runs": [names[i] for i in detailed_runs(names, order, top, list(show))],
    }


def run_metrics(name: str, run: Run, preds: Predictions, ferplus: FerPlusReference | None,
                seed: int = 0, n_boot: int = N_BOOTSTRAP) -> dict:
    """Headline, per-class, confusion, calibration and error examples of one run."""
    counts, normalised = confusion(preds)
    pairs = confused_pairs(counts, preds.class_names)
    file_of = None if preds.files is None else dict(zip(preds.row_ids.tolist(),
                                                        preds.files.tolist(), strict=True))
    for pair in pairs:
        pair["example_row_ids"] = pair_examples(
            preds, pair["true_index"], pair["pred_index"]).tolist()
        if file_of is not None:  # image-folder rows: their files, not their positions
            pair["example_files"] = [file_of[r] for r in pair["example_row_ids"]]
    out = {
        "name": name, "path": str(run.path), "kind": run_kind(run.config, run.summary),
        "train_minutes": run.summary.get("train_minutes"), "n": int(len(preds.labels)),
        "headline": headline(preds, n_boot, seed),
        "per_class": per_class(preds),
        "confusion": {"counts": counts.tolist(), "normalised": normalised.tolist()},
        "reliability": reliability(preds.probs, preds.labels),
        "confused_pairs": pairs,
        "confident_errors": error_examples(preds, "confident"),
        "ambiguous_errors": error_examples(preds, "ambiguous"),
    }
    if ferplus is not None:
        out["ferplus"] = ferplus_analysis(preds, ferplus)
    return out


def write_report(run_dirs: list[str | Path], out: str | Path, ferplus: Path | None = None,
                 data: Path | None = None, split: str = "test", seed: int = 0,
                 sort: str = "accuracy", group: list[str] | tuple[str, ...] = (),
                 top: int = TOP_RUNS, show: list[str] | tuple[str, ...] = (),
                 n_boot: int = N_BOOTSTRAP) -> dict:
    """Write report.html, report.md, metrics.json and PNGs to `out`; return the metrics.

    `run_dirs` may hold glob patterns; the other options are those of `compute_metrics`.
    Everything is written to a temporary folder first and then moved into `out`.
    """
    from ferens.report.render import to_html, to_markdown
    from ferens.report.sections import build_document, write_plots

    check_sort(sort)
    out = Path(out)
    check_replaceable(out, "report")
    if out.exists() and not out.is_dir():
        raise FerensError(f"{out}: exists and is not a folder; choose another --out")
    runs = load_runs(run_dirs)
    reference = None
    if ferplus is not None:
        from ferens.data.fer2013 import read_ferplus_votes

        reference = FerPlusReference.from_votes(read_ferplus_votes(ferplus))
    dataset = None
    if data is not None:
        from ferens.data.fer2013 import load_fer2013

        dataset = load_fer2013(data)
    metrics = compute_metrics(runs, split, reference, dataset, seed, n_boot, sort, group, top,
                              show)
    if metrics["ferplus"] is not None:
        metrics["ferplus"]["source"] = str(ferplus)
    with output_folder(out, "report") as tmp:
        images = thumbnail_lookup(dataset) if metrics["has_thumbnails"] else None
        plots = write_plots(metrics, tmp, images)
        doc = build_document(metrics, plots)
        (tmp / "report.html").write_text(to_html(doc), encoding="utf-8")
        (tmp / "report.md").write_text(to_markdown(doc), encoding="utf-8")
        # what this report wrote: a later report may replace these files and nothing else
        metrics["files"] = sorted([p.name for p in tmp.iterdir()] + ["metrics.json"])
        metrics = json_ready(metrics)
        write_json(tmp / "metrics.json", metrics)
    return metrics


def thumbnail_lookup(dataset):
    """A function mapping row ids to their 48x48 images in `dataset` (white if missing)."""
    def images(row_ids: list[int]) -> np.ndarray:
        pos = row_positions(dataset.row_ids, np.asarray(row_ids, dtype=np.int64))
        faces = dataset.images[np.maximum(pos, 0)].copy()
        faces[pos < 0] = 255
        return faces

    return images


def json_ready(obj):
    """Numpy scalars/arrays to Python, NaN/inf to None, so metrics.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _check_alignment(dataset, preds: list[Predictions], names: list[str], notes: list[str],
                     skipped: list[str]):
    """Keep the dataset only if its row ids and labels line up with at least one run."""
    mismatch = [label_mismatch(dataset, p) for p in preds]
    best = min(share for _, share in mismatch)
    if best > MISALIGNED_SHARE:
        skipped.append(f"thumbnails and the exact-duplicate analysis: the data at "
                       f"{dataset.source} does not line up with the predictions (at best "
                       f"{best:.1%} of rows are missing or carry another label)")
        return None
    for name, (count, share) in zip(names, mismatch, strict=True):
        if count:
            notes.append(f"{name}: {count} rows ({share:.1%}) are missing from the data or "
                         "labelled differently there.")
    return dataset
