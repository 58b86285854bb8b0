"""Turn the report's metrics into PNG plots and a document (the same for HTML and Markdown)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ferens.report import plots
from ferens.report.curves import TAIL_SHARE
from ferens.report.duplicates import SUBSETS
from ferens.report.overview import (
    READING_GUIDE,
    adjustments_section,
    groups_section,
    leaderboard_section,
    runs_section,
)
from ferens.report.render import Doc, fmt
from ferens.report.taxonomy import FERPLUS_CATEGORIES

HEADLINE = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"),
            ("balanced_accuracy", "balanced acc."), ("g_mean", "G-mean"))
FACES_PER_ROW = 6
DUPLICATE_LABELS = {
    "leaked": "leaked (pixels also in Training)",
    "leaked_same_label": "leaked, Training copy has the same label",
    "conflicting": "in a duplicate group with conflicting labels",
    "duplicated": "any exact duplicate",
    "rest": "no duplicate anywhere",
}


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe version of a run name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:limit] or "run"


RUN_PLOT_KINDS = ("_confusion", "_confused_pairs", "_confident_errors", "_ambiguous_errors")
GROUP_PLOT = re.compile(r"group_[0-9][0-9]_.*")
MAX_TABLE_RUNS = 6
MAX_CURVE_RUNS = 12


def leaderboard_order(metrics: dict) -> list[int]:
    """Indices into metrics["runs"], best first."""
    index = {r["name"]: i for i, r in enumerate(metrics["runs"])}
    return [index[row["name"]] for row in metrics["leaderboard"]["rows"]]


def ordered_curves(metrics: dict) -> list[dict]:
    """The training curves of metrics["curves"] in leaderboard order."""
    rank = {row["name"]: row["rank"] for row in metrics["leaderboard"]["rows"]}
    return sorted(metrics["curves"], key=lambda c: rank[c["name"]])


def write_plots(metrics: dict, out: Path,
                images: Callable[[list[int]], np.ndarray] | None) -> dict:
    """Write the report's PNGs into `out`: recall across runs (bars, or a heatmap for many
    runs), one recall plot per study group, the training curves of the first MAX_CURVE_RUNS
    runs with a metrics.csv, and reliability diagrams, confusion matrices and faces for the
    runs shown in detail only."""
    classes = tuple(metrics["class_names"])
    runs = [metrics["runs"][i] for i in leaderboard_order(metrics)]
    names = [r["name"] for r in runs]
    recalls = np.array([[r["per_class"][c]["recall"] for c in classes] for r in runs])
    detailed = set(metrics["detailed_runs"])
    shown = [r for r in runs if r["name"] in detailed]
    paths: dict = {
        "recall": plots.recall_png(recalls, names, classes, out / "per_class_recall.png"),
        "groups": {},
        "runs": [{} for _ in metrics["runs"]],
    }
    if shown:
        paths["reliability"] = plots.reliability_png(
            [r["reliability"] for r in shown], [r["name"] for r in shown],
            out / "reliability.png")
    curves = ordered_curves(metrics)
    if curves:
        title = "Training curves" + (f": the first {MAX_CURVE_RUNS} of {len(curves)} runs "
                                     "in leaderboard order" if len(curves) > MAX_CURVE_RUNS
                                     else "")
        paths["curves"] = plots.curves_png(curves[:MAX_CURVE_RUNS], out / "curves.png", title)
    comp = metrics["comparison"]
    if comp and len(runs) > MAX_TABLE_RUNS:
        order = leaderboard_order(metrics)
        matrix = np.array(comp["disagreement"])[np.ix_(order, order)]
        paths["disagreement"] = plots.heatmap_png(
            matrix, names, [plots.shorten(n, 12) for n in names], out / "disagreement.png",
            "Share of rows on which two runs predict differently", annotate=False)
    for g, group in enumerate(metrics["groups"]):
        if group["kind"] != "seed":
            rows = group["rows"]
            paths["groups"][g] = plots.recall_png(
                np.array([[r["recall"][c] for c in classes] for r in rows]),
                [f"{r['value']}: {r['name']}" for r in rows], classes,
                out / f"group_{g + 1:02d}_{slug(group['field'])}.png",
                f"Per-class recall by {plots.shorten(group['field'], 30)}")
    for i, run in enumerate(metrics["runs"]):
        if run["name"] not in detailed:
            continue
        stem = f"{i + 1:02d}_{slug(run['name'])}"
        cm = run["confusion"]
        entry = paths["runs"][i]
        entry["confusion"] = plots.confusion_png(
            np.array(cm["counts"]), np.array(cm["normalised"]), classes,
            f"Confusion matrix: {plots.shorten(run['name'])}", out / f"{stem}_confusion.png")
        if images is not None:
            entry.update(_face_plots(run, images, out, stem))
    return paths


def _face_plots(run: dict, images: Callable, out: Path, stem: str) -> dict:
    paths = {}
    pairs = [list(images(p["example_row_ids"])) for p in run["confused_pairs"]]
    if pairs:
        paths["pairs"] = plots.face_grid_png(pairs, out / f"{stem}_confused_pairs.png")
    for kind in ("confident", "ambiguous"):
        errors = run[f"{kind}_errors"]
        if errors:
            faces = list(images([e["row_id"] for e in errors]))
            rows = [faces[i:i + FACES_PER_ROW] for i in range(0, len(faces), FACES_PER_ROW)]
            paths[kind] = plots.face_grid_png(rows, out / f"{stem}_{kind}_errors.png")
    return paths


def build_document(metrics: dict, paths: dict) -> Doc:
    """The report as a Doc: leaderboard and study groups first, then the analyses across runs,
    the top runs in detail (the others collapsed) and the run folders last."""
    runs = metrics["runs"]
    doc = Doc(f"ferens report: {metrics['split']} split, {len(runs)} run(s)")
    kinds = {k: sum(r["kind"] == k for r in runs) for k in dict.fromkeys(r["kind"] for r in runs)}
    doc.para(f"{len(runs)} runs (" + ", ".join(f"{n} {k}" for k, n in kinds.items())
             + f") on the {metrics['split']} split. " + READING_GUIDE)
    for item in metrics["skipped"]:
        doc.note(f"Skipped {item}.")
    for item in metrics["notes"]:
        doc.note(item)
    leaderboard_section(doc, metrics)
    groups_section(doc, metrics, paths)
    adjustments_section(doc, metrics)
    _recall(doc, metrics, paths)
    _headline(doc, metrics)
    _calibration(doc, metrics, paths)
    if "curves" in paths:
        _curves(doc, metrics, paths)
    if metrics["comparison"]:
        _comparison(doc, metrics, paths)
    if metrics["ferplus"]:
        _ferplus(doc, metrics)
    if metrics["duplicates"]:
        _duplicates(doc, metrics)
    _run_sections(doc, metrics, paths)
    runs_section(doc, metrics)
    return doc


def _ordered(metrics: dict) -> list[dict]:
    return [metrics["runs"][i] for i in leaderboard_order(metrics)]


def _headline(doc: Doc, metrics: dict) -> None:
    doc.heading("All scores with intervals")
    doc.para(f"In leaderboard order. {metrics['ci_level']:.0%} percentile bootstrap intervals "
             f"over {metrics['n_bootstrap']} resamples of the {metrics['split']} rows (seed "
             f"{metrics['seed']}). NLL is the mean negative log-likelihood, Brier the multi-class "
             f"Brier score (sum over classes, 0..2), ECE the expected calibration error over "
             f"{metrics['ece_bins']} equal-width confidence bins.")
    rows = []
    for run in _ordered(metrics):
        h = run["headline"]
        cells = [f"{fmt(h[k]['value'])} [{fmt(h[k]['ci_low'])}, {fmt(h[k]['ci_high'])}]"
                 for k, _ in HEADLINE]
        rows.append([run["name"], h["n"], *cells, fmt(h["nll"]), fmt(h["brier"]),
                     fmt(h["ece"])])
    doc.table(["run", "n", *(label for _, label in HEADLINE), "NLL", "Brier", "ECE"], rows)


def _recall(doc: Doc, metrics: dict, paths: dict) -> None:
    doc.heading("Per-class recall across runs")
    runs = _ordered(metrics)
    classes = metrics["class_names"]
    support = runs[0]["per_class"]
    doc.image(paths["recall"], "Per-class recall by run")
    doc.table(["run", *classes],
              [[f"support ({runs[0]['name']})", *(support[c]["support"] for c in classes)]]
              + [[r["name"], *(fmt(r["per_class"][c]["recall"]) for c in classes)]
                 for r in runs])


def _calibration(doc: Doc, metrics: dict, paths: dict) -> None:
    doc.heading("Calibration")
    if "reliability" not in paths:
        doc.para("No run is shown in detail (--top 0); ECE of every run is in the scores table.")
        return
    doc.para(f"Reliability diagrams of the {len(metrics['detailed_runs'])} runs shown in detail "
             "(the top of the leaderboard): accuracy of the top prediction in each confidence "
             "bin; bars below the diagonal mean over-confidence. The ECE of every run is in "
             "the scores table.")
    doc.image(paths["reliability"], "Reliability diagrams")


def _curves(doc: Doc, metrics: dict, paths: dict) -> None:
    curves = ordered_curves(metrics)
    shown = min(len(curves), MAX_CURVE_RUNS)
    doc.heading("Training curves")
    doc.para(f"Per-epoch numbers from the metrics.csv of the {len(curves)} of "
             f"{len(metrics['runs'])} runs that have one (trained members; ensembles and "
             "adjusted runs have none), in leaderboard order"
             + (f"; the plot shows the first {shown}, the other {len(curves) - shown} are in "
                "the table only" if len(curves) > shown else "")
             + ". Train loss is the training objective on augmented batches (with any label "
             "smoothing, mixup or distillation), so compare its shape, not its level, with val "
             "loss. The best epoch is the one with the highest val accuracy (the first on "
             "ties); a run that chose its weights on val macro-F1 may have kept another. "
             "Last - best is the last epoch's val accuracy minus the best; the gain over the "
             f"last {TAIL_SHARE:.0%} of epochs is their best val accuracy minus the "
             "best before them: above 0, the run was still setting new bests when its schedule "
             "ended.")
    doc.image(paths["curves"], "Training curves")
    doc.table(["run", "epochs", "best val epoch", "best val acc.", "last-epoch val acc.",
               "last - best", f"gain over the last {TAIL_SHARE:.0%}"],
              [[c["name"], c["n_epochs"], fmt(c["best_epoch"]), fmt(c["best_val_accuracy"]),
                fmt(c["last_val_accuracy"]), _signed(c["last_minus_best"]),
                _signed(c["tail_gain"])] for c in curves])


def _signed(value: float | None) -> str:
    """A change in val accuracy: 4 digits, as one val row is 0.0003 of FER2013's 3,589."""
    return "–" if value is None else f"{value:+.4f}"


def _comparison(doc: Doc, metrics: dict, paths: dict) -> None:
    comp = metrics["comparison"]
    runs = _ordered(metrics)
    doc.heading("Comparing runs")
    doc.para(f"On {comp['n_common']} common rows: {comp['all_wrong']} are wrong in every run, "
             f"{comp['all_right']} are right in every run; at least one run is right on "
             f"{fmt(comp['oracle_accuracy'])} of rows (oracle accuracy).")
    doc.table(["class", "wrong in every run"], [[c, n] for c, n in
                                                comp["all_wrong_per_class"].items()])
    doc.table(["run", "errors made by this run only"],
              [[r["name"], comp["only_this_run_wrong"][r["name"]]] for r in runs])
    if "disagreement" in paths:
        doc.heading("Pairwise disagreement", 3)
        doc.para("Share of rows on which two runs predict differently, runs in leaderboard "
                 f"order. McNemar's test for all {len(comp['mcnemar'])} pairs is in "
                 "metrics.json (comparison.mcnemar); the leaderboard and the study groups show "
                 "the tests that answer a question.")
        doc.image(paths["disagreement"], "Pairwise disagreement")
        return
    names = [r["name"] for r in metrics["runs"]]
    doc.heading("Pairwise disagreement (share of rows with different predictions)", 3)
    doc.table(["run", *names], [[a, *(fmt(v) for v in row)]
                                for a, row in zip(names, comp["disagreement"], strict=True)])
    doc.heading("McNemar's exact test", 3)
    doc.para("Two-sided binomial test on the rows where exactly one of the two runs is right; "
             "q is the Benjamini-Hochberg adjusted p over all pairs; significant means q < 0.05.")
    doc.table(["run A", "run B", "A right, B wrong", "A wrong, B right", "acc. A - B", "p", "q",
               "significant"],
              [[m["a"], m["b"], m["a_right_b_wrong"], m["a_wrong_b_right"],
                f"{m['accuracy_diff']:+.4f}", f"{m['p_value']:.3g}", f"{m['q_value']:.3g}",
                "yes" if m["significant"] else "no"] for m in comp["mcnemar"]])


def _ferplus(doc: Doc, metrics: dict) -> None:
    doc.heading("FER+ noise taxonomy")
    doc.para(metrics["ferplus"]["rules"])
    rows = [[r["name"], r["ferplus"]["errors"],
             *(r["ferplus"]["total"][c] for c in FERPLUS_CATEGORIES)] for r in _ordered(metrics)]
    doc.table(["run", "errors", *FERPLUS_CATEGORIES], rows)
    doc.heading("Accuracy re-scored against FER+ majority labels", 3)
    doc.para("Rows whose FER+ plurality (no tie) is one of the seven FER2013 emotions.")
    rows = []
    for r in _ordered(metrics):
        s = r["ferplus"]["rescored"]
        rows.append([r["name"], s["n"], fmt(s["accuracy_vs_ferplus"]),
                     fmt(s["accuracy_vs_fer2013_same_rows"]),
                     fmt(s["fer2013_label_agrees_with_ferplus"])])
    doc.table(["run", "rows", "acc. vs FER+", "acc. vs FER2013 (same rows)",
               "FER2013 label = FER+"], rows)


def _duplicates(doc: Doc, metrics: dict) -> None:
    dup = metrics["duplicates"]
    doc.heading("Exact duplicates")
    doc.para(f"Images compared byte for byte over the whole dataset; {dup['n_rows']} "
             f"{metrics['split']} rows found in the data; {dup['n_conflicting_groups']} "
             "duplicate groups with conflicting labels touch them.")
    doc.para("Accuracy of each run on each subset of rows; the first line counts the rows.")
    doc.table(["run", *(DUPLICATE_LABELS[s] for s in SUBSETS)],
              [["rows", *(dup["counts"][s] for s in SUBSETS)]]
              + [[r["name"], *(fmt(dup["accuracy"][r["name"]][s]) for s in SUBSETS)]
                 for r in _ordered(metrics)])
    if dup["conflicting_groups"]:
        doc.heading("Duplicate groups with conflicting labels", 3)
        classes = metrics["class_names"]
        doc.table(["rows", "labels", "usage"],
                  [[" ".join(map(str, g["row_ids"])), ", ".join(classes[k] for k in g["labels"]),
                    ", ".join(g["usage"])] for g in dup["conflicting_groups"]])


def _run_sections(doc: Doc, metrics: dict, paths: dict) -> None:
    """The detailed runs in full; the others with their tables only, collapsed."""
    detailed = set(metrics["detailed_runs"])
    order = leaderboard_order(metrics)
    shown = [i for i in order if metrics["runs"][i]["name"] in detailed]
    rest = [i for i in order if metrics["runs"][i]["name"] not in detailed]
    if shown:
        doc.heading("Runs in detail")
        doc.para(f"The top {metrics['top']} runs of the leaderboard"
                 + (" and the runs picked with --show" if len(shown) > metrics["top"] else "")
                 + ": per-class scores, confusion matrices, the most confused pairs and the "
                 "most confident and most ambiguous errors of each.")
    for i in shown:
        _run_section(doc, metrics, metrics["runs"][i], paths["runs"][i])
    if rest:
        doc.heading("Other runs")
        doc.para(f"The {len(rest)} runs below the top {metrics['top']} of the leaderboard, "
                 "tables only (no plots); every number is also in metrics.json.")
        doc.open_details(f"{len(rest)} other runs: per-class scores and error tables")
        for i in rest:
            _run_section(doc, metrics, metrics["runs"][i], {})
        doc.close_details()


def _run_section(doc: Doc, metrics: dict, run: dict, paths: dict) -> None:
    doc.heading(f"Run: {run['name']}")
    doc.heading("Per-class precision, recall, F1", 3)
    doc.table(["class", "precision", "recall", "F1", "support"],
              [[c, fmt(v["precision"]), fmt(v["recall"]), fmt(v["f1"]), v["support"]]
               for c, v in run["per_class"].items()])
    if "confusion" in paths:
        doc.image(paths["confusion"], f"Confusion matrices of {run['name']}")
    doc.heading("Most confused pairs", 3)
    by_file = any("example_files" in p for p in run["confused_pairs"])
    doc.table(["true", "predicted", "count", "share of true class",
               "example files" if by_file else "example rows"],
              [[p["true"], p["pred"], p["count"], fmt(p["share_of_true"]),
                " ".join(map(str, p.get("example_files", p["example_row_ids"])))]
               for p in run["confused_pairs"]])
    if "pairs" in paths:
        doc.para("Example faces: one row per pair above, most confident mistakes first.")
        doc.image(paths["pairs"], f"Example faces of confused pairs, {run['name']}")
    for kind, text in (("confident", "highest predicted probability among wrong answers"),
                       ("ambiguous", "smallest margin between the top two probabilities")):
        doc.heading(f"{kind.capitalize()} errors ({text})", 3)
        errors = run[f"{kind}_errors"]
        doc.table(["file" if any("file" in e for e in errors) else "row", "true", "predicted",
                   "p(pred)", "p(true)", "top-2 margin"],
                  [[e.get("file", e["row_id"]), e["true"], e["pred"], fmt(e["p_pred"]),
                    fmt(e["p_true"]), fmt(e["margin"])] for e in errors])
        if kind in paths:
            doc.para(f"Faces in table order, {FACES_PER_ROW} per row.")
            doc.image(paths[kind], f"{kind.capitalize()} errors of {run['name']}")
    if "ferplus" in run:
        doc.heading("FER+ taxonomy of the errors, by true class", 3)
        doc.table(["class", *FERPLUS_CATEGORIES],
                  [[c, *(counts[k] for k in FERPLUS_CATEGORIES)]
                   for c, counts in run["ferplus"]["per_class"].items()])
