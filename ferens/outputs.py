"""Output folders that never cost a user a file.

A command replaces only a folder it can prove is its own earlier output of the same kind. It
builds the new output in a uniquely named temporary folder beside ``out`` (never a guessable
sibling of a user path), then swaps it into place: the old folder is moved aside and deleted only
once the new one is there. An interrupted command therefore leaves either the old output or the
new one, never a mix. A lock (a file in the machine's temp folder, keyed by the folder's path)
keeps two ferens processes from writing the same folder at once.

    with output_folder(Path("ensembles/mean"), "ensemble") as tmp:
        ...write files into tmp...
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ferens.bundle_format import is_own_bundle
from ferens.errors import FerensError

RUN_FILES = {"config.json", "summary.json", "predictions"}
PREDICTION_FILES = {"val.npz", "test.npz", "train.npz"}
LEGACY_REPORT_SUFFIXES = {".png", ".html", ".md", ".json"}
OUTPUT_NAMES = {"bundle": "a bundle written by `ferens export`"}
PREDICT_FILES = {"predictions.csv", "predictions.json", "annotated", "timelines"}


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _no_links(folder: Path) -> bool:
    return not any(p.is_symlink() for p in folder.rglob("*"))


def is_own_output(folder: Path, kind: str) -> bool:
    """Whether ``folder`` holds nothing but an earlier output of ``kind``: ``ensemble`` or
    ``adjusted`` (a run folder of that kind), ``report``, ``predictions`` or ``bundle``."""
    if kind == "bundle":
        return is_own_bundle(folder)
    names = {p.name for p in folder.iterdir()}
    if not _no_links(folder):
        return False
    if kind in ("ensemble", "adjusted"):
        config = _read_json(folder / "config.json")
        predictions = folder / "predictions"
        return (config is not None and config.get("kind") == kind and names <= RUN_FILES
                and (not predictions.exists() or {p.name for p in predictions.iterdir()}
                     <= PREDICTION_FILES))
    if kind == "report":  # exactly the files the earlier report lists as its own
        metrics = _read_json(folder / "metrics.json")
        if metrics is None or not all(p.is_file() for p in folder.iterdir()):
            return False
        if "files" not in metrics:  # written before reports listed their files
            return ("runs" in metrics and "class_names" in metrics
                    and all(p.suffix in LEGACY_REPORT_SUFFIXES for p in folder.iterdir()))
        return isinstance(metrics["files"], list) and names <= set(metrics["files"])
    if kind == "predictions":
        payload = _read_json(folder / "predictions.json")
        return payload is not None and "rows" in payload and names <= PREDICT_FILES
    raise ValueError(f"unknown output kind {kind!r}")


def check_creatable(path: str | Path) -> None:
    """Refuse a path that cannot be created because a file stands where a folder must be."""
    path = Path(path)
    for parent in path.parents:  # the nearest existing one decides
        if parent.is_dir():
            return
        if parent.exists() or parent.is_symlink():
            raise FerensError(f"{path}: cannot be created: {parent} is a file, not a folder")


def check_output_file(path: str | Path) -> None:
    """Refuse an output file path that is a folder or lies under a file."""
    path = Path(path)
    if path.is_dir():
        raise FerensError(f"{path}: is a folder; give a file name to write")
    check_creatable(path)


def check_replaceable(out: str | Path, kind: str) -> None:
    """Refuse an ``out`` that is a file, a link, a path under a file, or a non-empty folder
    that is not an earlier output of ``kind`` (cheap: commands call it before any work)."""
    out = Path(out)
    check_creatable(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise FerensError(f"{out}: exists and is not a folder; refusing to replace it")
    if out.is_dir() and any(out.iterdir()) and not is_own_output(out, kind):
        what = OUTPUT_NAMES.get(kind, f"an earlier ferens {kind} output")
        raise FerensError(f"{out}: is not {what} (it holds other files); refusing to replace "
                          "it. Choose another --out")


def staging_folder(out: Path, kind: str) -> Path:
    """A new, uniquely named temporary folder beside a replaceable ``out``."""
    check_replaceable(out, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would make the output private to its writer
    return tmp


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an old ``out`` is moved aside first and deleted
    only once the new one is in place."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "previous")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def lock_path(folder: Path) -> Path:
    """The lock file of a folder: in the machine's temp folder, named by a hash of the folder's
    absolute path, so no lock file ever lands among the user's or the study's files."""
    key = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:24]
    root = Path(tempfile.gettempdir()) / f"ferens-locks-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root / f"{key}.lock"


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` or fail at once with one line when another process
    holds it. The lock dies with its process; it guards processes on one machine."""
    check_creatable(folder)  # a file where a folder must be: one line, before any work
    fd = os.open(lock_path(folder), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FerensError(f"{folder}: another ferens process is writing it; wait for it "
                              "to finish (or stop it) and run the command again") from None
        yield
    finally:
        os.close(fd)


@contextmanager
def output_folder(out: str | Path, kind: str) -> Iterator[Path]:
    """Lock ``out``, yield a staging folder to write into, and swap it into place on success;
    on any failure the staging folder is removed and ``out`` is left as it was."""
    out = Path(out)
    with folder_lock(out):
        tmp = staging_folder(out, kind)
        try:
            yield tmp
            swap_into_place(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
