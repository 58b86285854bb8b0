"""The report's opening sections: leaderboard, study groups, adjusted runs and the run list."""

from __future__ import annotations

from ferens.report.render import Doc, fmt
from ferens.report.significance import ALPHA

LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "balanced_accuracy": "bal. acc.",
          "g_mean": "G-mean", "nll": "NLL", "brier": "Brier", "ece": "ECE"}
SCORES = ("accuracy", "macro_f1", "balanced_accuracy")
MAX_SEED_COLUMNS = 5
READING_GUIDE = (
    "How to read this report: the leaderboard ranks every run and says which ones are "
    "measurably worse than the best; the study groups then isolate one config field at a time "
    "(and show how much runs move by seed alone); per-class recall, calibration, the training "
    "curves and the error analysis follow; the top runs of the leaderboard are shown in detail, "
    "the others collapsed, and the run folders are listed at the end.")


def fmt_q(test: dict | None) -> str:
    """q value of a McNemar test, starred when significant; '–' when there is no test."""
    if test is None or "q_value" not in test:
        return "–"
    return f"{test['q_value']:.2g}" + (" *" if test["significant"] else "")


def leaderboard_section(doc: Doc, metrics: dict) -> None:
    board = metrics["leaderboard"]
    sort, label = board["sort"], LABELS[board["sort"]]
    direction = "higher" if board["higher_is_better"] else "lower"
    doc.heading("Leaderboard")
    text = (f"Every run, sorted by {label} ({direction} is better); the brackets give its "
            f"{metrics['ci_level']:.0%} bootstrap interval where one exists. "
            f"Δ is the difference in {label} to the best run, {board['best']}.")
    if board["n_common"] is not None:
        text += (f" q comes from McNemar's exact test of which rows each run gets right against "
                 f"the best run ({board['n_common']} rows predicted by every run), "
                 f"Benjamini-Hochberg adjusted over the {len(board['rows']) - 1} runs tested; "
                 f"* marks q < {ALPHA}, a difference in accuracy unlikely to be chance.")
    doc.para(text)
    others = [m for m in SCORES if m != sort]
    classes = list(board["rows"][0]["recall"]) if board["rows"] else []
    rows = []
    for r in board["rows"]:
        value = fmt(r["value"], 4 if sort in ("nll", "brier") else 3)
        if r["ci"] is not None:
            value += f" [{fmt(r['ci'][0])}, {fmt(r['ci'][1])}]"
        rows.append([r["rank"], r["name"], r["kind"], value, *(fmt(r[m]) for m in others),
                     *(fmt(r["recall"][c]) for c in classes),
                     "best" if r["rank"] == 1 else f"{r['diff_vs_best']:+.3f}",
                     "best" if r["rank"] == 1 else fmt_q(r["vs_best"])])
    doc.table(["#", "run", "kind", label, *(LABELS[m] for m in others),
               *(f"{c} recall" for c in classes), "Δ vs best", "q vs best"], rows)


def groups_section(doc: Doc, metrics: dict, paths: dict) -> None:
    groups = metrics["groups"]
    if len(metrics["runs"]) < 2:
        return
    doc.heading("Study groups")
    if not groups:
        doc.para("No two runs differ in exactly one config field (besides the seed); "
                 "`--group FIELD` compares runs on a field anyway.")
        return
    doc.para("Found from each run's config.json, leaving out bookkeeping (names, paths, "
             "threads, device): runs that differ in exactly one field form a group on that "
             "field. The seed is set aside: runs that differ only in their seed form a seed "
             "group, shown as mean, sample sd (n - 1) and range, and in the other groups the "
             "seed replicates of one value are pooled. q tests each run against the best run "
             "of its group (McNemar, Benjamini-Hochberg over the group); * marks q < "
             f"{ALPHA}. Minutes are training minutes where the run recorded them.")
    for i, group in enumerate(groups):
        doc.heading(group["title"], 3)
        if group["kind"] == "seed":
            _seed_group(doc, group, metrics["class_names"])
        else:
            _field_group(doc, group, metrics["class_names"])
        if i in paths.get("groups", {}):
            doc.image(paths["groups"][i], f"Per-class recall: {group['title']}")


def _seed_group(doc: Doc, group: dict, classes: list[str]) -> None:
    rows = group["rows"]
    doc.para(f"{len(rows)} runs that differ only in their seed: "
             + ", ".join(f"{r['name']} (seed {r['seed']})" for r in rows) + ".")
    ens = group["seed_ensemble"]
    if ens:
        doc.para(f"Seed ensemble: {ens['name']}, an ensemble of exactly these runs.")
    stats = group["seed_stats"]
    each = len(rows) <= MAX_SEED_COLUMNS
    table = []
    for name, s in stats.items():
        label = LABELS.get(name, name)
        cells = [label, fmt(s["mean"], 4), fmt(s["sd"], 4), fmt(s["min"]), fmt(s["max"]),
                 fmt(s["range"])]
        if each:
            cells += [fmt(v) for v in s["values"]]
        if ens:
            cells.append(fmt(_ensemble_value(ens, name)))
        table.append(cells)
    doc.table(["score", "mean", "sd", "min", "max", "range",
               *([f"seed {r['seed']}" for r in rows] if each else []),
               *(["seed ensemble"] if ens else [])], table)


def _ensemble_value(ens: dict, name: str):
    if name.startswith("recall "):
        return ens["recall"].get(name.removeprefix("recall "))
    return ens.get(name)


def _field_group(doc: Doc, group: dict, classes: list[str]) -> None:
    field = group["field"]
    if group["kind"] == "forced":
        varying = group["varying"]
        doc.para(f"Every run with a {field} field (forced with --group). "
                 + (f"These runs also differ in {', '.join(varying)}, so the comparison is "
                    "not controlled." if varying else "No other field differs."))
    rows = group["rows"]
    other = list(rows[0]["other"])
    minutes = any(r["minutes"] is not None for r in rows)
    table = []
    for r in rows:
        table.append([r["value"], r["name"], *(r["other"][k] for k in other),
                      *(fmt(r[m]) for m in SCORES), *(fmt(r["recall"][c]) for c in classes),
                      *([fmt(r["minutes"], 0)] if minutes else []),
                      "best" if r["name"] == group["best"] else fmt_q(r["vs_best"])])
    doc.table([field, "run", *other, *(LABELS[m] for m in SCORES), *classes,
               *(["minutes"] if minutes else []), "q vs best"], table)
    if group.get("pooled"):
        doc.para("Mean over the seed replicates of each value (± sample sd where there are "
                 "several).")
        doc.table([field, "runs", *(LABELS[m] for m in SCORES), *classes],
                  [[p["value"], p["n"], *(_mean_sd(p[m]) for m in SCORES),
                    *(fmt(p["recall"][c]) for c in classes)] for p in group["pooled"]])


def _mean_sd(spread: dict) -> str:
    if spread["n"] < 2:
        return fmt(spread["mean"])
    return f"{fmt(spread['mean'])} ± {fmt(spread['sd'])}"


def adjustments_section(doc: Doc, metrics: dict) -> None:
    pairs = metrics["adjustments"]
    if not pairs:
        return
    focus = [c for c in ("Disgust", "Fear") if c in metrics["class_names"]]
    doc.heading("Logit adjustment: adjusted runs against their sources")
    doc.para("Each adjusted run next to the run it adjusts; Δ is adjusted minus source; p is "
             "McNemar's exact test of the two runs' per-row correctness.")
    rows = []
    for p in pairs:
        a, b = p["adjusted"], p["before"]
        rows.append([p["name"], p["source"],
                     *(x for m in ("accuracy", "macro_f1") for x in (fmt(a[m]),
                                                                   f"{a[m] - b[m]:+.3f}")),
                     *(f"{a['recall'][c] - b['recall'][c]:+.3f}" for c in focus),
                     f"{p['test']['p_value']:.2g}" if p["test"] else "–"])
    doc.table(["adjusted run", "source", "accuracy", "Δ accuracy", "macro-F1", "Δ macro-F1",
               *(f"Δ {c} recall" for c in focus), "p"], rows)


def runs_section(doc: Doc, metrics: dict) -> None:
    doc.heading("Details: the runs and their folders")
    order = {r["name"]: r["rank"] for r in metrics["leaderboard"]["rows"]}
    runs = sorted(metrics["runs"], key=lambda r: order[r["name"]])
    doc.table(["#", "run", "kind", "folder", "rows", "train minutes"],
              [[order[r["name"]], r["name"], r["kind"], r["path"], r["n"],
                fmt(r["train_minutes"], 0)] for r in runs])
