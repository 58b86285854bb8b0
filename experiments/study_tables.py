"""Markdown tables and the accuracy-vs-minutes plot of a study, from its committed outputs.

    .venv/bin/python experiments/study_tables.py results/study > results/study/tables.md

Also writes ``<study>/accuracy_vs_minutes.png``: PublicTest accuracy after every epoch against
cumulative training minutes, one line per member (where more compute would go).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def ci(entry: dict) -> str:
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def mcnemar_p(metrics: dict, a: str, b: str) -> str:
    for row in (metrics.get("comparison") or {}).get("mcnemar", []):
        if {row["a"], row["b"]} == {a, b}:
            return f"{row['p_value']:.3g}"
    return "-"


def load_member(study: Path, name: str) -> tuple[dict, dict, list[dict]]:
    """(summary, config, metrics.csv rows) of one committed member."""
    folder = study / "members" / name
    rows = (folder / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    epochs = [dict(zip(header, map(float, r.split(",")), strict=True)) for r in rows[1:]]
    return (json.loads((folder / "summary.json").read_text()),
            json.loads((folder / "config.json").read_text()), epochs)


def imbalance_baseline(config: dict, configs: dict[str, dict]) -> str | None:
    """The member whose config differs from ``config`` only by imbalance=none."""
    ignore = {"name", "imbalance", "threads", "out_dir", "data"}
    for name, other in configs.items():
        if other["imbalance"] == "none" and other["name"] != config["name"] and all(
                other[k] == config[k] for k in config if k not in ignore):
            return name
    return None


def recipe_table(study: Path, names: list[str]) -> list[str]:
    """PublicTest accuracy against training minutes, with the settings that differ."""
    lines = ["| member | model | stem | width | augment | optimiser (lr, wd) | label smoothing | "
             "imbalance | epochs (best) | train min x threads | img/s | val acc, no TTA | "
             "val acc, flip TTA |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        s, c, epochs = load_member(study, name)
        plain = epochs[s["best_epoch"] - 1]["val_accuracy"]
        lines.append(
            f"| {name} | {c['model']} | {c['stem']} | {c['width']} | {c['augment']} | "
            f"{c['optimizer']} ({c['lr']:g}, {c['weight_decay']:g}) | {c['label_smoothing']:g} | "
            f"{c['imbalance']} | {s['epochs_run']} ({s['best_epoch']}) | "
            f"{s['train_minutes']:.1f} x {s['threads']} | {s['images_per_second']:.0f} | "
            f"{plain:.4f} | {s['val']['accuracy']:.4f} ({s['val']['accuracy'] - plain:+.4f}) |")
    return lines


def member_table(study: Path, metrics: dict, runs: dict, names: list[str]) -> list[str]:
    loaded = {name: load_member(study, name) for name in names}
    configs = {name: config for name, (_, config, _) in loaded.items()}
    lines = ["| member | imbalance | val acc | test acc [95% CI] | test macro-F1 [95% CI] | "
             "McNemar p vs the same recipe with imbalance none |",
             "|---|---|---|---|---|---|"]
    for name in names:
        s = loaded[name][0]
        head = runs[name]["headline"]
        base = imbalance_baseline(configs[name], configs)
        versus = f"{mcnemar_p(metrics, base, name)} (vs {base})" if base else "-"
        lines.append(
            f"| {name} | {s['imbalance']} | {s['val']['accuracy']:.4f} | "
            f"{ci(head['accuracy'])} | {ci(head['macro_f1'])} | {versus} |")
    return lines


def recall_table(metrics: dict, names: list[str]) -> list[str]:
    classes = metrics["class_names"]
    lines = ["| run | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for name in names:
        per = metrics_run(metrics, name)["per_class"]
        cells = [f"{per[c]['recall']:.3f} [{per[c]['recall_ci'][0]:.2f}, "
                 f"{per[c]['recall_ci'][1]:.2f}]" for c in classes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def ensemble_table(study: Path, runs: dict) -> list[str]:
    lines = ["| method | val acc | test acc [95% CI] | test macro-F1 | best member (by val) | "
             "test gain over it | seconds |", "|---|---|---|---|---|---|---|"]
    for path in sorted((study / "ensembles").iterdir()):
        s = json.loads((path / "summary.json").read_text())
        head = runs[s["name"]]["headline"]
        best = s["best_member"]
        lines.append(
            f"| {s['method']} | {s['val']['accuracy']:.4f} | {ci(head['accuracy'])} | "
            f"{s['test']['macro_f1']:.4f} | {best['name']} ({best['test_accuracy']:.4f}) | "
            f"{s['test']['accuracy'] - best['test_accuracy']:+.4f} | {s['seconds']:.1f} |")
    return lines


def adjusted_table(study: Path, metrics: dict) -> list[str]:
    """Each logit-adjusted run against its source: tau, accuracy, macro-F1, Disgust recall."""
    lines = ["| adjusted run | tau (chosen on val) | val acc | test acc | test macro-F1 | "
             "test Disgust recall [95% Wilson] | McNemar p vs source |",
             "|---|---|---|---|---|---|---|"]
    for path in sorted((study / "adjusted").glob("*")):
        s = json.loads((path / "summary.json").read_text())
        before = s["source_metrics"]
        disgust = metrics_run(metrics, s["name"])["per_class"]["Disgust"]
        low, high = disgust["recall_ci"]
        lines.append(
            f"| {s['name']} | {s['tau']:.2f} | {before['val']['accuracy']:.4f} -> "
            f"{s['val']['accuracy']:.4f} | {before['test']['accuracy']:.4f} -> "
            f"{s['test']['accuracy']:.4f} | {before['test']['macro_f1']:.4f} -> "
            f"{s['test']['macro_f1']:.4f} | "
            f"{before['test']['per_class_recall']['Disgust']:.3f} -> {disgust['recall']:.3f} "
            f"[{low:.2f}, {high:.2f}] | {mcnemar_p(metrics, s['source'], s['name'])} |")
    return lines


def metrics_run(metrics: dict, name: str) -> dict:
    return next(r for r in metrics["runs"] if r["name"] == name)


def plot_accuracy_vs_minutes(study: Path, names: list[str | Path]) -> Path:
    """Val accuracy per epoch against cumulative train minutes, from each metrics.csv; a name
    is a member of ``study``, a path any member folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, (by_epoch, by_minute) = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    colours = plt.get_cmap("tab20").colors  # one colour per member up to 20 (tab10 repeats)
    for i, name in enumerate(names):
        folder = name if isinstance(name, Path) else study / "members" / name
        name = folder.name
        rows = pd.read_csv(folder / "metrics.csv")
        style = {"marker": "o", "ms": 3, "label": name, "color": colours[i % len(colours)]}
        by_epoch.plot(rows["epoch"], rows["val_accuracy"], **style)
        by_minute.plot(rows["seconds"].cumsum() / 60, rows["val_accuracy"], **style)
    by_epoch.set(xlabel="epoch", ylabel="PublicTest accuracy (selection TTA)",
                 title="Accuracy by epoch")
    by_minute.set(xlabel="wall training minutes, one thread (machine load varied)",
                  title="Accuracy vs compute")
    for ax in (by_epoch, by_minute):
        ax.grid(alpha=0.3)
    by_minute.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    path = study / "accuracy_vs_minutes.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(study: Path) -> None:
    metrics = json.loads((study / "report" / "metrics.json").read_text())
    runs = {r["name"]: r for r in metrics["runs"]}
    members = sorted(p.name for p in (study / "members").iterdir())
    baseline = next((m for m in members if m.endswith("-none")), members[0])
    members = [baseline] + [m for m in members if m != baseline]
    ensembles = sorted(p.name for p in (study / "ensembles").iterdir())
    adjusted = sorted(p.name for p in (study / "adjusted").glob("*"))
    out = ["### Recipe search (PublicTest; the best epoch by PublicTest accuracy)", "",
           *recipe_table(study, members), "",
           "### Members (PrivateTest; selected on PublicTest)", "",
           *member_table(study, metrics, runs, members), "",
           "### Per-class test recall [95% Wilson interval]", "",
           *recall_table(metrics, members + ensembles + adjusted),
           "", "### Ensembles of all members (fitted on PublicTest only)", "",
           *ensemble_table(study, runs)]
    if adjusted:
        out += ["", "### Post-hoc logit adjustment (`ferens adjust`, tau chosen on PublicTest)",
                "", *adjusted_table(study, metrics)]
    print("\n".join(out))
    plot_accuracy_vs_minutes(study, members)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/study"))
