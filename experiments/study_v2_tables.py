"""Tables and plot of study v2 (issue 13) from its committed outputs.

    .venv/bin/python experiments/study_v2_tables.py > results/study_v2/tables.md

Reads ``results/study_v2/members/*`` plus v1's ``strong-e45`` (the base recipe's seed 0), the
ensembles in ``results/study_v2/ensembles``, and writes
``results/study_v2/accuracy_vs_minutes.png``.
Every gain is shown against the base recipe's seed spread and with McNemar's exact test against
``strong-e45``.
"""

from __future__ import annotations

import json
import statistics
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import f1_score
from study_tables import plot_accuracy_vs_minutes

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "results" / "study_v2"
BASE = ROOT / "results" / "study" / "members" / "strong-e45"
SHORT = ROOT / "results" / "study" / "members" / "strong-e25"  # v1: the base recipe, 25 epochs
TARGETS = {"member": 0.700, "ensemble": 0.725, "ensemble_macro_f1": 0.71, "distilled": 0.705}
# Fields that say how a member was run, not what it learned from (select_tta: the TTA that
# picks the best epoch; the saved predictions use `tta` either way).
BOOKKEEPING = {"name", "out_dir", "data", "threads", "workers", "device", "compile", "seed",
               "engine", "ferplus", "channels_last", "extra", "select_tta"}


def load(folder: Path) -> dict:
    preds = np.load(folder / "predictions" / "test.npz")
    return {"name": folder.name, "folder": folder,
            "summary": json.loads((folder / "summary.json").read_text()),
            "config": json.loads((folder / "config.json").read_text()),
            "test": preds}


def recipe_change(config: dict, base: dict) -> str:
    """The recipe fields in which a member differs from the base (fields a config lacks take
    their defaults, as `TrainConfig` loads them)."""
    from ferens.config import TrainConfig

    a, b = (TrainConfig.from_dict(c | {"engine": c.get("engine", 1)}).to_dict()
            for c in (base, config))
    diffs = [f"{k}={b[k]}" for k in b if k not in BOOKKEEPING and a[k] != b[k]]
    return ", ".join(diffs) or "- (base recipe)"


def wilson(k: int, n: int) -> tuple[float, float]:
    z = 1.959964
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def correct(run: dict, order: np.ndarray) -> np.ndarray:
    t = run["test"]
    position = {r: i for i, r in enumerate(t["row_ids"])}
    idx = np.array([position[r] for r in order])
    return t["logits"][idx].argmax(1) == t["labels"][idx]


def mcnemar(a: dict, b: dict) -> float:
    order = a["test"]["row_ids"]
    ra, rb = correct(a, order), correct(b, order)
    only_a, only_b = int((ra & ~rb).sum()), int((~ra & rb).sum())
    return 1.0 if only_a + only_b == 0 else binomtest(only_a, only_a + only_b).pvalue


def members_table(runs: list[dict], base: dict, seeds: list[dict]) -> list[str]:
    accs = [r["summary"]["test"]["accuracy"] for r in seeds]
    mean = statistics.mean(accs)
    sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
    lines = ["| member | seed | change vs the base recipe | engine | train min x threads | "
             "best epoch | val acc | test acc [95% CI] | test macro-F1 | Disgust | Fear | "
             "test - base seed mean (in base sd) | McNemar p vs strong-e45 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        s, c = r["summary"], r["config"]
        acc, n = s["test"]["accuracy"], s["test"]["n"]
        low, high = wilson(round(acc * n), n)
        rec = s["test"]["per_class_recall"]
        gap = acc - mean
        units = f" ({gap / sd:+.1f} sd)" if len(seeds) >= 3 and sd > 0 else ""
        lines.append(
            f"| {r['name']} | {c['seed']} | {recipe_change(c, base['config'])} | "
            f"{c.get('engine', 1)} | {s['train_minutes']:.0f} x {s['threads']} | "
            f"{s['best_epoch']}/{s['epochs_run']} | {s['val']['accuracy']:.4f} | "
            f"{acc:.4f} [{low:.3f}, {high:.3f}] | {s['test']['macro_f1']:.4f} | "
            f"{rec['Disgust']:.3f} | {rec['Fear']:.3f} | {gap:+.4f}{units} | "
            f"{'-' if r is base else f'{mcnemar(base, r):.3g}'} |")
    return lines


def recipes_with_seeds(runs: list[dict], base: dict) -> dict[str, list[dict]]:
    """The recipes trained with two or more seeds, keyed by their change against the base."""
    by_recipe: dict[str, list[dict]] = {}
    for r in runs:
        by_recipe.setdefault(recipe_change(r["config"], base["config"]), []).append(r)
    return {k: v for k, v in by_recipe.items() if len(v) > 1}


def seeds_table(recipes: dict[str, list[dict]]) -> list[str]:
    """Mean, sd and range per recipe and split; the first recipe is the yardstick, and every
    other recipe's mean is shown against it in the yardstick's sd."""
    lines = ["| recipe | split | seeds | mean | sd | min | max | mean - base mean (in base sd) |",
             "|---|---|---|---|---|---|---|---|"]
    yardstick = {}
    for i, (recipe, seeds) in enumerate(recipes.items()):
        for split in ("val", "test"):
            accs = [r["summary"][split]["accuracy"] for r in seeds]
            mean, sd = statistics.mean(accs), statistics.stdev(accs)
            base_mean, base_sd = yardstick.setdefault(split, (mean, sd))
            gap = ("-" if i == 0
                   else f"{mean - base_mean:+.4f} ({(mean - base_mean) / base_sd:+.1f} sd)")
            lines.append(f"| {recipe} | {split} | {', '.join(r['name'] for r in seeds)} | "
                         f"{mean:.4f} | {sd:.4f} | {min(accs):.4f} | {max(accs):.4f} | {gap} |")
    return lines


def tta_table(runs: list[dict]) -> list[str]:
    modes = ("none", "flip", "shift", "tencrop")
    lines = ["| member | split | " + " | ".join(modes) + " | gain of the saved TTA over none |",
             "|---|---|" + "---|" * (len(modes) + 1)]
    for r in runs:
        tta = r["summary"].get("tta_accuracy")
        if not tta:
            continue
        for split in ("val", "test"):
            row = tta[split]
            saved = r["config"]["tta"]
            cells = [f"{row[m]:.4f}" if m in row else "-" for m in modes]
            lines.append(f"| {r['name']} | {split} | " + " | ".join(cells)
                         + f" | {row[saved] - row['none']:+.4f} ({saved}) |")
    return lines


def ensemble_table(study: Path) -> list[str]:
    lines = ["| ensemble | members | val acc | test acc | test macro-F1 | best member (by val), "
             "test | gain |", "|---|---|---|---|---|---|---|"]
    for path in sorted((study / "ensembles").glob("*")):
        s = json.loads((path / "summary.json").read_text())
        best = s["best_member"]
        gain = s["test"]["accuracy"] - best["test_accuracy"]
        lines.append(
            f"| {path.name} | {len(s['members'])} | {s['val']['accuracy']:.4f} | "
            f"{s['test']['accuracy']:.4f} | {s['test']['macro_f1']:.4f} | {best['name']} "
            f"({best['test_accuracy']:.4f}) | {gain:+.4f} |")
    return lines


def schedule_table(runs: list[dict]) -> list[str]:
    """Accuracy against schedule length: the members whose recipe differs from another's only in
    ``epochs`` (and the crop), with the final epoch's training accuracy (under augmentation) next
    to val: a model still below val on its own training images is underfit, not overfit."""
    import pandas as pd

    lines = ["| member | epochs | crop | train min x threads | last-epoch train acc (augmented) "
             "| last-epoch val acc (curve TTA) | best val acc | test acc | Disgust | Fear |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["config"].get("crop_size", 0), r["config"]["epochs"])):
        c, s = r["config"], r["summary"]
        last = pd.read_csv(r["folder"] / "metrics.csv").iloc[-1]
        rec = s["test"]["per_class_recall"]
        lines.append(
            f"| {r['name']} | {c['epochs']} | {c.get('crop_size') or c['input_size']} | "
            f"{s['train_minutes']:.0f} x {s['threads']} | {last['train_accuracy']:.4f} | "
            f"{last['val_accuracy']:.4f} ({curve_tta(c)}) | {s['val']['accuracy']:.4f} | "
            f"{s['test']['accuracy']:.4f} | {rec['Disgust']:.3f} | {rec['Fear']:.3f} |")
    return lines


def curve_tta(config: dict) -> str:
    """The TTA of a member's val curve (metrics.csv): select_tta when set, else its tta."""
    chosen = config.get("select_tta", "auto")
    return config.get("tta", "flip") if chosen in (None, "auto") else chosen


def distillation_table(runs: list[dict], base: dict) -> list[str]:
    """Each distilled member next to the same recipe without a teacher, and its teacher."""
    lines = ["| student | teacher (val / test acc) | weight, T | same recipe without teacher | "
             "val acc | test acc | val - without teacher | test - without teacher | McNemar p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        c = r["config"]
        if not c.get("teacher"):
            continue
        plain = {k: v for k, v in c.items() if k not in ("teacher", "distill_weight",
                                                          "distill_temperature")}
        twins = [o for o in runs if not o["config"].get("teacher")
                 and recipe_change(o["config"], base["config"])
                 == recipe_change(plain, base["config"])]
        twin = next((o for o in twins if o["config"]["seed"] == c["seed"]), None)
        teacher = json.loads((ROOT / c["teacher"] / "summary.json").read_text())
        acc, val = r["summary"]["test"]["accuracy"], r["summary"]["val"]["accuracy"]
        twin_cells = (f"{twin['name']} | {val:.4f} | {acc:.4f} | "
                      f"{val - twin['summary']['val']['accuracy']:+.4f} | "
                      f"{acc - twin['summary']['test']['accuracy']:+.4f} | "
                      f"{mcnemar(twin, r):.3g}") if twin else (
            f"- | {val:.4f} | {acc:.4f} | - | - | -")
        lines.append(f"| {r['name']} | {Path(c['teacher']).name} "
                     f"({teacher['val']['accuracy']:.4f} / {teacher['test']['accuracy']:.4f}) | "
                     f"{c.get('distill_weight', 0.5)}, {c.get('distill_temperature', 2.0)} | "
                     f"{twin_cells} |")
    return lines


def ensemble_size_table(runs: list[dict]) -> list[str]:
    """Accuracy of the plain mean of probabilities over every subset of k members, k = 1..n:
    how fast averaging more members of one recipe saturates, and its limit fitted as a + b/k.
    Nothing is fitted on or chosen by these accuracies, so both splits are reported alike."""
    lines = ["| members averaged (k) | subsets | val acc mean [min, max] | "
             "test acc mean [min, max] | test macro-F1 mean |", "|---|---|---|---|---|"]
    from ferens.combine.ensemble import (
        check_members,  # checks and aligns rows to the first member's
    )
    from ferens.runs import load_run

    members = check_members([load_run(r["folder"]) for r in runs])
    splits = {split: ([m.splits[split].probs for m in members], members[0].splits[split].labels)
              for split in ("val", "test")}
    sizes = range(1, len(runs) + 1)
    means: dict[str, list[float]] = {"val": [], "test": [], "f1": []}
    for k in sizes:
        cells, f1s = [], []
        for split, (probs, labels) in splits.items():
            accs = []
            for subset in combinations(range(len(runs)), k):
                predicted = np.mean([probs[i] for i in subset], axis=0).argmax(1)
                accs.append(float((predicted == labels).mean()))
                if split == "test":
                    f1s.append(f1_score(labels, predicted, average="macro"))
            cells.append(f"{np.mean(accs):.4f} [{min(accs):.4f}, {max(accs):.4f}]")
            means[split].append(float(np.mean(accs)))
        means["f1"].append(float(np.mean(f1s)))
        lines.append(f"| {k} | {len(accs)} | {cells[0]} | {cells[1]} | {means['f1'][-1]:.4f} |")
    if len(runs) >= 3:  # the limit of infinitely many such members, fitted as a + b / k
        limit = {key: np.polyfit(1.0 / np.array(sizes), values, 1)[1]
                 for key, values in means.items()}
        lines.append(f"| infinity (fit a + b/k) | - | {limit['val']:.4f} | {limit['test']:.4f} | "
                     f"{limit['f1']:.4f} |")
    return lines


def targets_table(runs: list[dict], study: Path) -> list[str]:
    """The headline numbers against the issue's targets, every choice made on PublicTest."""
    def best(items: list[dict]) -> dict:
        return max(items, key=lambda s: s["val"]["accuracy"])

    members = [r["summary"] | {"name": r["name"]} for r in runs]
    ensembles = [json.loads((p / "summary.json").read_text()) | {"name": p.name}
                 for p in sorted((study / "ensembles").glob("*"))]
    students = [r["summary"] | {"name": r["name"]} for r in runs if r["config"].get("teacher")]
    rows = [("best single member (by val)", best(members), "accuracy", TARGETS["member"])]
    if ensembles:
        top = best(ensembles)
        rows += [("best ensemble (by val)", top, "accuracy", TARGETS["ensemble"]),
                 ("best ensemble (by val), macro-F1", top, "macro_f1",
                  TARGETS["ensemble_macro_f1"])]
    if students:
        rows.append(("distilled member (by val)", best(students), "accuracy",
                     TARGETS["distilled"]))
    lines = ["| target | run | val acc | test value | target | test - target |",
             "|---|---|---|---|---|---|"]
    for label, s, metric, target in rows:
        value = s["test"][metric]
        lines.append(f"| {label} | {s['name']} | {s['val']['accuracy']:.4f} | {value:.4f} | "
                     f"{target:.3f} | {value - target:+.4f} |")
    return lines


def main(study: Path = STUDY) -> None:
    base = load(BASE)
    runs = [base] + [load(p) for p in sorted((study / "members").glob("*"))
                     if (p / "summary.json").is_file()]
    recipes = recipes_with_seeds(runs, base)
    seeds = recipes["- (base recipe)"]
    out = ["### Members: each recipe feature alone on the base recipe (strong-e45), and seeds",
           "", *members_table(runs, base, seeds), "",
           "### Seed spread of each recipe trained with several seeds", "",
           *seeds_table(recipes), "",
           "### Test-time augmentation, accuracy per mode (engine-2 members)", "",
           *tta_table(runs)]
    out += ["", "### Schedule length (same recipe, more epochs)", "",
            *schedule_table([load(SHORT)] + [r for r in runs if r["name"] in (
                "strong-e45", "e45-crop44") or r["config"]["epochs"] != 45])]
    if any(r["config"].get("teacher") for r in runs):
        out += ["", "### Distillation", "", *distillation_table(runs, base)]
    if (study / "ensembles").is_dir():
        out += ["", "### Ensembles (fitted on PublicTest only)", "", *ensemble_table(study)]
    long = [r for r in runs if r["config"]["epochs"] >= 90]
    if len(long) >= 2:
        names = ", ".join(r["name"] for r in long)
        out += ["", f"### Averaging more long-schedule members ({names})", "",
                *ensemble_size_table(long)]
    out += ["", "### Headline numbers against the targets (PrivateTest; chosen on PublicTest)",
            "", *targets_table(runs, study)]
    print("\n".join(out))
    plot_accuracy_vs_minutes(study, [r["folder"] for r in runs])


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else STUDY)
