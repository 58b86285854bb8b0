"""Tables and plot of study v3 (issue 23): does diversity, not seeds, buy the ensemble's gain?

    .venv/bin/python experiments/study_v3_tables.py > results/study_v3/tables.md

Reads the finished members in ``results/study_v3/members`` and study v2's six long members (the
study file's ``extra_runs``), and writes ``results/study_v3/disagreement_vs_gain.png``. The
second-generation students (members whose teacher is an ensemble of this study) are kept apart
from the diverse members: they get their own table (each seed, their mean, the shipped model and
the issue's targets) and join only the last ensemble set.
Everything is computed from the committed predictions; every ensemble is fitted on PublicTest
(val) only, through ``ferens.combine.ensemble.combine``. No torch is imported.
"""

from __future__ import annotations

import sys
import tomllib
from itertools import combinations
from pathlib import Path

import numpy as np

from ferens.combine.ensemble import METHODS, combine, disagreement
from ferens.runs import Run, load_run, split_metrics

ROOT = Path(__file__).resolve().parents[1]
STUDY_FILE = ROOT / "experiments" / "study_v3.toml"
V2_SHIPPED = "crop44-e90-distill-s1"  # the model study v2 shipped
ARCHITECTURE = ("model", "width", "stem", "input_size", "crop_size")


def architecture(run: Run) -> str:
    c = run.config
    return (f"{c['model']} w{c['width']:g} stem {c['stem']}, "
            f"{c['input_size']} px / {c['crop_size']} crop")


STUDENT_TARGETS = {"val": 0.695, "test": 0.720}


def load_members(spec: dict, root: Path = ROOT) -> tuple[list[Run], list[Run], list[Run]]:
    """(v2 long members, finished diverse v3 members, finished students) of a parsed study
    file, in its order, with its paths taken from ``root``. A student is a member taught by a
    run of this study's results."""
    v2 = [load_run(root / p) for p in spec["study"]["extra_runs"]]
    results = spec["study"]["results_dir"]
    folder = root / results / "members"
    v3 = [load_run(folder / m["name"]) for m in spec["members"]
          if (folder / m["name"] / "summary.json").is_file()]
    return (v2, [r for r in v3 if not is_student(r, results)],
            [r for r in v3 if is_student(r, results)])


def is_student(run: Run, results_dir: str) -> bool:
    teacher = run.config.get("teacher") or ""
    return Path(teacher).parts[:len(Path(results_dir).parts)] == Path(results_dir).parts


def accuracy(run) -> dict[str, float]:
    return {s: split_metrics(run.splits[s])["accuracy"] for s in ("val", "test")}


def members_table(runs: list[Run]) -> list[str]:
    lines = ["| member | architecture | teacher | val acc | test acc | test macro-F1 | Disgust | "
             "Fear | train min | sessions |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        s = r.summary
        rec = s["test"]["per_class_recall"]
        sessions = s.get("resumes", 0) + 1
        lines.append(f"| {r.name} | {architecture(r)} | {r.config.get('teacher') or '-'} | "
                     f"{s['val']['accuracy']:.4f} | {s['test']['accuracy']:.4f} | "
                     f"{s['test']['macro_f1']:.4f} | {rec['Disgust']:.3f} | {rec['Fear']:.3f} | "
                     f"{s['train_minutes']:.0f} | {sessions} |")
    return lines


def students_table(students: list[Run], shipped: Run) -> list[str]:
    """Each student seed, the mean of the seeds against the issue's targets, and the shipped
    model it would replace (the replacement is decided on val alone)."""
    lines = ["| run | val acc | test acc | test macro-F1 | Disgust | Fear | train min |",
             "|---|---|---|---|---|---|---|"]
    for r in [*students, shipped]:
        s = r.summary
        rec = s["test"]["per_class_recall"]
        label = f"{r.name} (shipped by study v2)" if r is shipped else r.name
        lines.append(f"| {label} | {s['val']['accuracy']:.4f} | {s['test']['accuracy']:.4f} | "
                     f"{s['test']['macro_f1']:.4f} | {rec['Disgust']:.3f} | {rec['Fear']:.3f} | "
                     f"{s['train_minutes']:.0f} |")
    mean = {k: float(np.mean([r.summary[k]["accuracy"] for r in students]))
            for k in ("val", "test")}
    met = " and ".join(f"{k} {mean[k]:.4f} {'>=' if mean[k] >= t else '<'} {t:.3f}"
                       for k, t in STUDENT_TARGETS.items())
    lines += ["", f"Mean of the {len(students)} student seeds: {met} (the issue's targets)."]
    return lines


def pair_rows(runs: list[Run], member_acc: dict[str, dict[str, float]]) -> list[dict]:
    """Every pair: disagreement, the mean ensemble's accuracy and its gain over the better
    member, on val and on test (``member_acc``: each member's accuracy by name and split)."""
    by_pair = {tuple(d["pair"]): d for d in disagreement(runs, [r.name for r in runs])}
    rows = []
    for a, b in combinations(runs, 2):
        ens = accuracy(combine([a, b], "mean"))
        acc_a, acc_b = member_acc[a.name], member_acc[b.name]
        same = all(a.config[k] == b.config[k] for k in ARCHITECTURE)
        rows.append({"a": a.name, "b": b.name, "same": same,
                     **{f"dis_{s}": by_pair[(a.name, b.name)][s] for s in ("val", "test")},
                     **{f"gain_{s}": ens[s] - max(acc_a[s], acc_b[s]) for s in ("val", "test")},
                     **{f"ens_{s}": ens[s] for s in ("val", "test")}})
    return sorted(rows, key=lambda r: r["dis_test"])


def pairs_table(rows: list[dict]) -> list[str]:
    lines = ["| member A | member B | architecture | disagreement val / test | mean of the pair "
             "val / test | gain over the better member val / test |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['a']} | {r['b']} | {'same' if r['same'] else 'different'} | "
                     f"{r['dis_val']:.3f} / {r['dis_test']:.3f} | {r['ens_val']:.4f} / "
                     f"{r['ens_test']:.4f} | {r['gain_val']:+.4f} / {r['gain_test']:+.4f} |")
    return lines


def pairs_summary(rows: list[dict]) -> list[str]:
    lines = ["| pairs | count | mean disagreement (test) | mean gain val | mean gain test | "
             "pairs that gain on test |", "|---|---|---|---|---|---|"]
    for label, same in (("same architecture (seeds, distillation)", True),
                        ("different architecture", False)):
        group = [r for r in rows if r["same"] == same]
        if not group:
            continue
        mean = {k: float(np.mean([r[k] for r in group])) for k in ("dis_test", "gain_val",
                                                                   "gain_test")}
        wins = sum(r["gain_test"] > 0 for r in group)
        lines.append(f"| {label} | {len(group)} | {mean['dis_test']:.3f} | "
                     f"{mean['gain_val']:+.4f} | {mean['gain_test']:+.4f} | {wins}/{len(group)} |")
    return lines


def ensembles_table(sets: dict[str, list[Run]],
                    member_acc: dict[str, dict[str, float]]) -> list[str]:
    """Every method over each set of members; the gain is against the set's best member on the
    same split (the target: >= +0.010 on val and on test)."""
    lines = ["| members | method | val acc | test acc | best member val / test | "
             "gain val / test |", "|---|---|---|---|---|---|"]
    for label, runs in sets.items():
        best = {s: max(member_acc[r.name][s] for r in runs) for s in ("val", "test")}
        for method in METHODS:
            ens = accuracy(combine(runs, method))
            lines.append(f"| {label} | {method} | {ens['val']:.4f} | {ens['test']:.4f} | "
                         f"{best['val']:.4f} / {best['test']:.4f} | "
                         f"{ens['val'] - best['val']:+.4f} / {ens['test'] - best['test']:+.4f} |")
    return lines


def plot_pairs(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for same, colour, label in ((True, "tab:blue", "same architecture"),
                                (False, "tab:orange", "different architecture")):
        group = [r for r in rows if r["same"] == same]
        ax.scatter([r["dis_test"] for r in group], [100 * r["gain_test"] for r in group],
                   c=colour, label=f"{label} ({len(group)} pairs)", s=28)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("disagreement on PrivateTest (share of faces the two label differently)")
    ax.set_ylabel("mean of the pair minus its better member\n(PrivateTest accuracy, points)")
    ax.set_title("Study v3: pairs of members, disagreement vs ensemble gain")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def main(study_file: Path = STUDY_FILE, root: Path = ROOT) -> None:
    """Print the tables and write the plot for the study file, whose relative paths
    (results, extra runs) are taken from ``root``, the repository by default."""
    spec = tomllib.loads(study_file.read_text())
    v2, v3, students = load_members(spec, root)
    runs = v2 + v3
    member_acc = {r.name: accuracy(r) for r in runs + students}
    rows = pair_rows(runs, member_acc)
    out = ["### Members (study v2's six long members, then the finished v3 members)", "",
           *members_table(runs), "",
           "### Does diversity buy the gain? Pairs of members, summary", "",
           *pairs_summary(rows), "",
           "### Every pair, by disagreement on test", "", *pairs_table(rows), "",
           "### Ensembles (fitted on PublicTest only)", "",
           *ensembles_table({f"v2 long ({len(v2)})": v2,
                             f"v2 long + v3 ({len(runs)})": runs,
                             **({f"v3 only ({len(v3)})": v3} if len(v3) > 1 else {}),
                             **({f"v2 long + v3 + students ({len(runs) + len(students)})":
                                 runs + students} if students else {})},
                            member_acc)]
    if students:
        shipped = next(r for r in v2 if r.name == V2_SHIPPED)
        out += ["", "### Second-generation students (half-width resnet18, distilled from "
                f"{students[0].config['teacher']})", "", *students_table(students, shipped)]
    print("\n".join(out))
    plot_pairs(rows, root / spec["study"]["results_dir"] / "disagreement_vs_gain.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else STUDY_FILE)
