"""Saved predictions and run folders: the contract between train-member, ensemble and report.

A run folder (a member or an ensemble) holds::

    config.json              how it was made
    summary.json             headline metrics (val and test)
    predictions/val.npz      logits (N,7) float32, labels (N,) int64, row_ids (N,) int64,
    predictions/test.npz     class_names (7,) str; files (N,) str for image-folder data

``row_ids`` are the original row indices in fer2013.csv, so runs line up row by row.
Ensembles store log-probabilities as ``logits`` (softmax gives back their probabilities).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import log_softmax, softmax
from sklearn.metrics import accuracy_score, f1_score, recall_score

from ferens.classes import CLASS_NAMES
from ferens.errors import FerensError
from ferens.io import atomic_path, read_json
from ferens.outputs import output_folder

SPLITS = ("val", "test")
# The small outputs of a finished member that a study's results keep (never its weights or
# checkpoints); engine-2 members also predict the Training split, so they can teach without
# their weights.
MEMBER_OUTPUTS = ("config.json", "metrics.csv", "summary.json", "predictions/val.npz",
                  "predictions/test.npz")
OPTIONAL_MEMBER_OUTPUTS = ("predictions/train.npz",)
# Fields of config.json / summary.json that ensemble, adjust and report read, by type.
RUN_FIELD_TYPES = {"name": (str, "text"), "kind": (str, "member, ensemble or adjusted"),
                   "labels": (str, "fer2013 or ferplus"), "source": (str, "a folder path"),
                   "train_minutes": ((int, float), "a number of minutes")}


@dataclass
class Predictions:
    """Logits of one run on one split, with the labels and stable row ids they belong to."""

    logits: np.ndarray
    labels: np.ndarray
    row_ids: np.ndarray
    class_names: tuple[str, ...] = CLASS_NAMES
    # image-folder data: each row's file (relative to the folder), as row ids are positions
    files: np.ndarray | None = None

    @property
    def probs(self) -> np.ndarray:
        return softmax(self.logits.astype(np.float64), axis=1)

    @property
    def log_probs(self) -> np.ndarray:
        return log_softmax(self.logits.astype(np.float64), axis=1)

    @property
    def predicted(self) -> np.ndarray:
        return self.logits.argmax(axis=1)


@dataclass
class Run:
    """A member or ensemble folder loaded from disk."""

    name: str
    path: Path
    config: dict
    summary: dict
    splits: dict[str, Predictions] = field(default_factory=dict)

    @property
    def val(self) -> Predictions:
        return self.splits["val"]

    @property
    def test(self) -> Predictions:
        return self.splits["test"]


def label_set(run: Run) -> str:
    """The labels a run is scored on: ``fer2013``, or ``ferplus`` for a ``--labels ferplus``
    member (val and test relabelled and filtered by FER+ too) and what is built from one."""
    return str(run.config.get("labels") or "fer2013")


def unique_names(names: list[str]) -> list[str]:
    """Names made unique by appending #2, #3, ... to repeats (the last resort of run_names)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def member_outputs(run_dir: Path) -> list[str]:
    """The small outputs of a finished member that results keep (never checkpoints)."""
    return [*MEMBER_OUTPUTS, *(n for n in OPTIONAL_MEMBER_OUTPUTS if (run_dir / n).is_file())]


def store_member(results_dir: Path, name: str, outputs: dict[str, bytes]) -> Path:
    """Write a finished member's small outputs (``{relative path: bytes}``) as
    ``results_dir/members/<name>``, whole, through a staging folder. An existing folder there
    is replaced only when it holds nothing but such outputs (an earlier copy); any other file
    in it is the user's, and the member is refused with one line. An identical copy is left
    as it is."""
    dest = results_dir / "members" / name
    if dest.is_dir() and not dest.is_symlink() and _same_files(dest, outputs):
        return dest
    with output_folder(dest, "member") as tmp:
        for relative, content in outputs.items():
            (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
            (tmp / relative).write_bytes(content)
    return dest


def _same_files(folder: Path, outputs: dict[str, bytes]) -> bool:
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}
    return present == set(outputs) and all(
        not (folder / r).is_symlink() and (folder / r).read_bytes() == content
        for r, content in outputs.items())


def run_names(runs: list[Run]) -> list[str]:
    """Distinct names for runs (summary and report keys): each run's own name, and where
    several share one, the name under as many of its parent folders as tell them apart, so
    a member, an ensemble and an adjusted run all called ``stack`` become ``members/stack``,
    ``ensembles/stack`` and ``adjusted/stack``. #2, #3 only where the folders do not differ."""
    names = [r.name for r in runs]
    out = list(names)
    for name in set(names):
        group = [i for i, n in enumerate(names) if n == name]
        if len(group) < 2:
            continue
        parents = [Path(runs[i].path).absolute().parent.parts for i in group]
        for depth in range(1, max(len(p) for p in parents) + 1):
            labels = ["/".join([*p[len(p) - min(depth, len(p)):], name]) for p in parents]
            if len(set(labels)) == len(labels):
                break
        else:
            continue
        for i, label in zip(group, labels, strict=True):
            out[i] = label
    return unique_names(out)


def save_predictions(path: str | Path, preds: Predictions) -> None:
    """Write predictions atomically."""
    with atomic_path(path, ".npz") as tmp:
        np.savez_compressed(
            tmp,
            logits=np.asarray(preds.logits, dtype=np.float32),
            labels=np.asarray(preds.labels, dtype=np.int64),
            row_ids=np.asarray(preds.row_ids, dtype=np.int64),
            class_names=np.asarray(preds.class_names, dtype=str),
            **({} if preds.files is None else {"files": np.asarray(preds.files, dtype=str)}),
        )


def load_predictions(path: str | Path) -> Predictions:
    """Read and validate a predictions file; problems raise FerensError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FerensError(f"{path}: predictions file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # corrupt zip, pickled content, ...
        raise FerensError(f"{path}: cannot read predictions ({exc})") from None
    missing = {"logits", "labels", "row_ids"} - data.keys()
    if missing:
        raise FerensError(f"{path}: missing arrays {sorted(missing)}")
    logits, labels, row_ids = data["logits"], data["labels"], data["row_ids"]
    for key, array, kinds in (("logits", logits, "fiu"), ("labels", labels, "fiu"),
                              ("row_ids", row_ids, "iu")):
        if array.dtype.kind not in kinds:
            raise FerensError(f"{path}: {key} are {array.dtype} values, expected numbers"
                              + ("" if key == "logits" else " (whole numbers)"))
    for key, array in (("labels", labels), ("row_ids", row_ids)):
        if array.ndim != 1:
            raise FerensError(f"{path}: {key} have shape {array.shape}, expected (N,)")
    if labels.dtype.kind == "f" and len(labels):
        if not np.isfinite(labels).all():
            first = int(np.flatnonzero(~np.isfinite(labels))[0])
            raise FerensError(f"{path}: label {labels[first]} at position {first} is not a "
                              "class index")
        if (labels != np.round(labels)).any():
            raise FerensError(f"{path}: labels are not whole numbers")
    names = tuple(str(c) for c in data.get("class_names", CLASS_NAMES))
    if logits.ndim != 2 or logits.shape[1] != len(names):
        raise FerensError(f"{path}: logits have shape {logits.shape}, expected (N, {len(names)})")
    if not (len(labels) == len(row_ids) == len(logits)):
        raise FerensError(
            f"{path}: {len(logits)} logits, {len(labels)} labels, {len(row_ids)} row ids"
        )
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        raise FerensError(
            f"{path}: {int(bad.sum())} rows have NaN/inf logits (first row id {row_ids[bad][0]})"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise FerensError(f"{path}: labels outside 0..{len(names) - 1}")
    files = data.get("files")
    if files is not None and (files.dtype.kind != "U" or files.shape != labels.shape):
        raise FerensError(f"{path}: files are {files.dtype} {files.shape}, expected "
                          f"{len(labels)} file names")
    return Predictions(logits.astype(np.float32), labels.astype(np.int64),
                       row_ids.astype(np.int64), names, files)


def row_positions(row_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The one row join: the position in ``row_ids`` of each id in ``wanted``, -1 where absent
    (``pandas.Index.get_indexer``). ``row_ids`` must be unique."""
    index = pd.Index(np.asarray(row_ids, dtype=np.int64))
    if not index.is_unique:
        raise FerensError("row ids contain duplicates")
    return index.get_indexer(np.asarray(wanted, dtype=np.int64))


def split_metrics(preds: Predictions) -> dict:
    """Headline numbers for one split: accuracy, macro-F1, NLL and per-class recall."""
    y, p = preds.labels, preds.predicted
    labels = list(range(len(preds.class_names)))
    recall = recall_score(y, p, labels=labels, average=None, zero_division=0)
    nll = float(-preds.log_probs[np.arange(len(y)), y].mean()) if len(y) else float("nan")
    return {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, p)),
        "macro_f1": float(f1_score(y, p, labels=labels, average="macro", zero_division=0)),
        "nll": nll,
        "per_class_recall": {c: float(r) for c, r in zip(preds.class_names, recall, strict=True)},
    }


def check_output_folder(out: Path, sources: list[Path], kind: str, what: str, role: str) -> None:
    """Refuse an output folder that is one of ``sources`` or holds a run of another ``kind``
    (``what`` names that kind in the message, ``role`` names a source)."""
    for source in sources:
        if out.resolve() == source.resolve():
            raise FerensError(f"{source}: the output folder {out} is the {role}; "
                              "choose another --out")
    if (out / "config.json").is_file() and read_json(out / "config.json").get("kind") != kind:
        raise FerensError(f"{out}: holds a run that is not {what}; refusing to overwrite it")


def load_run(path: str | Path) -> Run:
    """Load a member or ensemble folder (config, summary, val and test predictions)."""
    path = Path(path)
    if not path.is_dir():
        raise FerensError(f"{path}: run folder not found")
    config = read_json(path / "config.json")
    summary = read_json(path / "summary.json") if (path / "summary.json").is_file() else {}
    for file, values in (("config.json", config), ("summary.json", summary)):
        for key, (kinds, expected) in RUN_FIELD_TYPES.items():
            value = values.get(key)
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
                raise FerensError(f"{path / file}: {key}={str(value)[:60]!r}: expected "
                                  f"{expected}")
    splits = {s: load_predictions(path / "predictions" / f"{s}.npz") for s in SPLITS}
    name = str(summary.get("name") or config.get("name") or path.name)
    return Run(name=name, path=path, config=config, summary=summary, splits=splits)
