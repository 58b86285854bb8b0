"""Transfer learning on a new label set (issue 26): FER+'s eight classes, contempt included,
trained from scratch vs fine-tuned from the model shipped with ferens.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python experiments/transfer_demo.py \\
        --folder /work/transfer_data --runs /work/transfer_runs --out results/transfer

1. Builds a labelled face folder OUTSIDE the repository (``--folder``): every FER2013 row whose
   FER+ votes (``fer2013new.csv``, joined row by row with ``fer2013.csv``) have one clear
   winner among the eight emotions (ties, unknown and not-a-face dropped), as
   ``train/<Class>/<row>.png`` (a stratified ``--train-rows`` subset of Training),
   ``val/`` (all of PublicTest) and ``test/`` (all of PrivateTest). Class names are the
   folder names: Angry, Contempt, Disgust, Fear, Happy, Neutral, Sad, Surprise.
2. Trains, for every seed, the same recipe (half-width resnet18, the shipped model's
   architecture) from random weights (``scratch``), from the shipped model (``--init default``:
   its backbone, a fresh eight-class head) and from the shipped model with the backbone at a
   tenth of the learning rate (``--backbone-lr-scale 0.1``). timm's ImageNet weights join as a
   fourth arm (full-width resnet18, ``--pretrained timm``) only when a local copy is found.
3. Copies each run's config, metrics, summary and val/test predictions to ``--out/members`` and
   writes ``--out/README.md`` with the table (PrivateTest = test, scored on FER+ labels).

The shipped model was trained on all 28,709 FER2013 Training faces with FER2013's labels, so
the training faces here are faces it has seen (with other labels); PrivateTest it has never
trained on or been chosen by. ``--smoke`` runs everything on what ``--fer2013``/``--ferplus``
give at the smallest size (for the test).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ferens.classes import CLASS_NAMES  # noqa: E402
from ferens.errors import FerensError  # noqa: E402

CONTEMPT = "Contempt"
MARKER = "transfer_demo.json"  # the folder's own description: what built it, with which rows
COPIED = ("config.json", "metrics.csv", "summary.json", "predictions/val.npz",
          "predictions/test.npz")


def ferplus_eight(fer2013: Path, ferplus: Path):
    """FER2013 faces with their FER+ majority among the eight emotions (contempt kept)."""
    from ferens.data.fer2013 import (
        check_ferplus_rows,
        ferplus_majority,
        load_fer2013,
        read_ferplus_votes,
    )

    ds = load_fer2013(fer2013)
    votes = read_ferplus_votes(ferplus)
    check_ferplus_rows(votes, ds, ferplus)
    labels, kind = ferplus_majority(votes)
    names = np.where(kind == "contempt", CONTEMPT,
                     np.array([CLASS_NAMES[i] if i >= 0 else "" for i in labels]))
    keep = np.isin(kind[ds.row_ids], ("emotion", "contempt"))
    return ds.subset(keep), names[ds.row_ids[keep]]


def build_folder(folder: Path, fer2013: Path, ferplus: Path, train_rows: int) -> dict:
    """Write the labelled folder (through a temporary folder renamed into place); an existing
    folder is reused only when its marker says it was built the same way."""
    from PIL import Image
    from sklearn.model_selection import train_test_split

    wanted = {"fer2013": str(fer2013.resolve()), "ferplus": str(ferplus.resolve()),
              "train_rows": train_rows}
    if folder.exists():
        marker = folder / MARKER
        if not marker.is_file():
            raise FerensError(f"{folder}: exists and was not written by transfer_demo.py; "
                              "choose another --folder")
        described = json.loads(marker.read_text())
        if {k: described.get(k) for k in wanted} != wanted:
            raise FerensError(f"{folder}: was built with {described}; remove it or choose "
                              "another --folder")
        return described
    ds, names = ferplus_eight(fer2013, ferplus)
    train = np.flatnonzero(ds.usage == "Training")
    if train_rows and train_rows < len(train):
        train, _ = train_test_split(train, train_size=train_rows, stratify=names[train],
                                    random_state=0)
    chosen = {"train": np.sort(train), "val": np.flatnonzero(ds.usage == "PublicTest"),
              "test": np.flatnonzero(ds.usage == "PrivateTest")}
    tmp = folder.with_name(f".{folder.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {}
    for split, rows in chosen.items():
        for i in rows:
            target = tmp / split / names[i] / f"{int(ds.row_ids[i])}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ds.images[i]).save(target)
        classes, n = np.unique(names[rows], return_counts=True)
        counts[split] = dict(zip(classes.tolist(), n.tolist(), strict=True))
    described = wanted | {"rows": counts, "rule": "FER+ majority of the 10 vote columns; ties, "
                          "unknown and not-a-face dropped; contempt kept"}
    (tmp / MARKER).write_text(json.dumps(described, indent=2) + "\n")
    tmp.rename(folder)
    return described


def arms(timm_cached: bool) -> dict[str, dict]:
    """The starting points compared, as TrainConfig fields over the shared recipe."""
    out = {"scratch": {}, "shipped": {"init": "default"},
           "shipped-lr0.1": {"init": "default", "backbone_lr_scale": 0.1}}
    if timm_cached:
        out["imagenet"] = {"pretrained": "timm", "width": 1.0}
    return out


def timm_weights_cached() -> Path | None:
    from ferens.models.pretrained import find_cached_weights, pretrained_name

    return find_cached_weights(pretrained_name("resnet18", "timm"))[0]


def train_all(folder: Path, runs: Path, epochs: int, seeds: list[int], threads: int,
              width: float, smoke: bool) -> list[dict]:
    from ferens.config import TrainConfig
    from ferens.train.member import train_member

    base = {"data": str(folder), "out_dir": str(runs), "model": "resnet18", "width": width,
            "epochs": epochs, "threads": threads, "tta": "flip", "augment": "light"}
    if smoke:
        base |= {"batch_size": 16}
    done = []
    for arm, fields in arms(timm_weights_cached() is not None).items():
        for seed in seeds:
            name = f"{arm}-s{seed}"
            cfg = TrainConfig.from_dict(base | fields | {"name": name, "seed": seed})
            print(f"== {name}", file=sys.stderr, flush=True)
            summary = train_member(cfg, resume=(runs / name / "config.json").is_file(),
                                   show_progress=not smoke)
            done.append({"arm": arm, "seed": seed, "name": name, "summary": summary})
    return done


def shipped_without_training(folder: Path) -> dict:
    """The shipped model on the folder's test faces as it is (its own seven classes and
    ten-crop TTA; it never predicts Contempt): the baseline fine-tuning starts from."""
    from ferens.data.fer2013 import load_fer2013
    from ferens.deploy.shipped import load_model
    from ferens.runs import Predictions, split_metrics

    test = load_fer2013(folder).split("test")
    model = load_model()
    predicted = np.array(model.class_names)[model.predict_proba(test.images).argmax(1)]
    truth = np.array(test.class_names)[test.labels]
    # scored in the folder's eight classes: each of the model's names is one of them
    index = {c: i for i, c in enumerate(test.class_names)}
    logits = np.full((len(test), len(test.class_names)), -50.0, np.float32)
    logits[np.arange(len(test)), [index[c] for c in predicted]] = 0.0
    metrics = split_metrics(Predictions(logits, test.labels, test.row_ids, test.class_names))
    assert abs(metrics["accuracy"] - float((predicted == truth).mean())) < 1e-12
    return metrics


def copy_outputs(runs: Path, out: Path, results: list[dict]) -> None:
    for r in results:
        for file in COPIED:
            target = out / "members" / r["name"] / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(runs / r["name"] / file, target)


def table(results: list[dict], baseline: dict | None = None) -> str:
    lines = ["| run | start | seed | test acc (FER+) | test macro-F1 | Contempt recall | "
             "val acc | best epoch | train min |", "|---|---|---|---|---|---|---|---|---|"]
    if baseline is not None:
        lines.append(f"| shipped model, no training | (its 7 classes, ten-crop) | - | "
                     f"{baseline['accuracy']:.4f} | {baseline['macro_f1']:.4f} | "
                     f"{baseline['per_class_recall'][CONTEMPT]:.3f} | - | - | 0 |")
    for r in results:
        s = r["summary"]
        lines.append(f"| {r['name']} | {r['arm']} | {r['seed']} | {s['test']['accuracy']:.4f} | "
                     f"{s['test']['macro_f1']:.4f} | "
                     f"{s['test']['per_class_recall'].get(CONTEMPT, float('nan')):.3f} | "
                     f"{s['val']['accuracy']:.4f} | {s['best_epoch']} | "
                     f"{s['train_minutes']:.1f} |")
    by_arm: dict[str, list[float]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], []).append(r["summary"]["test"]["accuracy"])
    lines += ["", "| start | mean test acc | runs | gap vs scratch |", "|---|---|---|---|"]
    scratch = float(np.mean(by_arm["scratch"]))
    for arm, accs in by_arm.items():
        lines.append(f"| {arm} | {np.mean(accs):.4f} | {len(accs)} | "
                     f"{np.mean(accs) - scratch:+.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fer2013", type=Path, default=Path("../shared/data/fer2013/"
                                                             "fer2013.csv.gz"))
    parser.add_argument("--ferplus", type=Path, default=Path("../shared/data/ferplus/"
                                                             "fer2013new.csv"))
    parser.add_argument("--folder", type=Path, required=True,
                        help="Where the labelled folder is built (outside the repository).")
    parser.add_argument("--runs", type=Path, required=True, help="Where members train.")
    parser.add_argument("--out", type=Path, required=True, help="Results folder to write.")
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--smoke", action="store_true", help="Quiet, batch 16 (for the test).")
    args = parser.parse_args(argv)
    try:
        described = build_folder(args.folder, args.fer2013, args.ferplus, args.train_rows)
        print(f"folder {args.folder}: " + "; ".join(
            f"{split} {sum(c.values())} rows" for split, c in described["rows"].items()),
            file=sys.stderr)
        results = train_all(args.folder, args.runs, args.epochs, args.seeds, args.threads,
                            args.width, args.smoke)
        copy_outputs(args.runs, args.out, results)
        baseline = shipped_without_training(args.folder)
    except FerensError as exc:
        print(f"transfer_demo: error: {exc}", file=sys.stderr)
        return 2
    cached = timm_weights_cached()
    command = "python experiments/transfer_demo.py " + " ".join(argv or sys.argv[1:])
    text = [
        "# Transfer: FER+ eight classes, from scratch vs from the shipped model", "",
        f"Written by `{command}`.", "",
        "Data: " + "; ".join(
            f"{split} {sum(c.values())} faces (" + ", ".join(f"{k} {v}" for k, v in c.items())
            + ")" for split, c in described["rows"].items()),
        "", table(results, baseline), "",
        "timm ImageNet row: " + (f"trained from {cached}." if cached else
                                 "not run: no local copy of timm's resnet18 weights (the row "
                                 "needs them; see the README's `--pretrained timm`)."), "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(
        {"command": command, "data": described, "shipped_without_training": baseline,
         "runs": [{k: v for k, v in r.items() if k != "summary"}
                  | {"test": r["summary"]["test"], "val": r["summary"]["val"],
                     "train_minutes": r["summary"]["train_minutes"]} for r in results]},
        indent=2) + "\n")
    (args.out / "table.md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
