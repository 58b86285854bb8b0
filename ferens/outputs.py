"""Output folders that never cost a user a file.

A command replaces only a folder it can prove is its own earlier output of the same kind: every
file in it is one that output's own file list names (a report's ``metrics.json``, a prediction
folder's ``predictions.json``, the fixed names of a run folder). It builds the new output in a
uniquely named hidden work folder beside ``out`` (``.NAME.ferens-XXXXXXXX``, created with
``mkdtemp``, never a guessable sibling of a user path) and swaps it into place: on Linux in one
atomic exchange (``renameat2(RENAME_EXCHANGE)``), elsewhere by moving the old folder aside into
the work folder first. An interrupted command therefore leaves either the old output or the new
one, never a mix; the next run of a command on the same ``out`` puts back an old output a kill
left aside and removes the work folders ferens left there (only those: named so, owned by the
user and holding ferens' marker file).

One process at a time writes a folder (``ferens.io.folder_lock``, held for the whole command).

    with output_folder(Path("ensembles/mean"), "ensemble") as tmp:
        ...write files into tmp...
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ferens.deploy.bundle_format import is_own_bundle
from ferens.errors import FerensError
from ferens.io import check_creatable, folder_lock, read_json

RUN_FILES = {"config.json", "summary.json", "fitted.json", "predictions/val.npz",
             "predictions/test.npz", "predictions/train.npz"}
# a member's small outputs as `ferens study` keeps them in results_dir/members/<name>
MEMBER_COPY_FILES = {"config.json", "metrics.csv", "summary.json", "predictions/val.npz",
                     "predictions/test.npz", "predictions/train.npz"}
PREDICT_FILES = {"predictions.csv", "predictions.json"}
PREDICT_FOLDERS = {"annotated", "timelines"}
OUTPUT_NAMES = {"bundle": "a bundle written by `ferens export`",
                "member": "a member's outputs copied by `ferens study`"}
WORK_MARK = "ferens-work.json"  # inside a work folder: proof that ferens made it
_MKDTEMP_TAIL = r"[a-z0-9_]{8}"  # tempfile's random part


def _read_json(path: Path) -> dict | None:
    """The JSON object in a plain file (never through a link), or None when there is none."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        return read_json(path)
    except FerensError:
        return None


def _tree(folder: Path) -> tuple[set[str], set[str]] | None:
    """(files, folders) under ``folder`` as relative POSIX paths; None when anything in it is a
    link or neither a plain file nor a folder."""
    files, folders = set(), set()
    for top, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = Path(top) / name
            mode = path.lstat().st_mode
            relative = path.relative_to(folder).as_posix()
            if stat.S_ISDIR(mode):
                folders.add(relative)
            elif stat.S_ISREG(mode):
                files.add(relative)
            else:
                return None
    return files, folders


def _listed(value) -> set[str]:
    return {v for v in value if isinstance(v, str)} if isinstance(value, list) else set()


def is_own_output(folder: Path, kind: str) -> bool:
    """Whether ``folder`` holds nothing but an earlier output of ``kind``: ``ensemble`` or
    ``adjusted`` (a run folder of that kind), ``report``, ``predictions``, ``member`` (a study's
    copy of a member) or ``bundle``: every file in it, at any depth, is one that output lists
    as its own (no links, no other files)."""
    if kind == "bundle":
        return is_own_bundle(folder)
    tree = _tree(folder)
    if tree is None:
        return False
    files, folders = tree
    if kind in ("ensemble", "adjusted"):
        config = _read_json(folder / "config.json")
        return (config is not None and config.get("kind") == kind and files <= RUN_FILES
                and folders <= {"predictions"})
    if kind == "member":
        config = _read_json(folder / "config.json")
        return (config is not None and config.get("kind") not in ("ensemble", "adjusted")
                and files <= MEMBER_COPY_FILES and folders <= {"predictions"})
    if kind == "report":  # exactly the files the earlier report lists as its own
        metrics = _read_json(folder / "metrics.json")
        return (metrics is not None and not folders
                and files <= _listed(metrics.get("files")) | {"metrics.json"})
    if kind == "predictions":  # the files predictions.json lists; before it listed them, none
        payload = _read_json(folder / "predictions.json")  # below annotated/ or timelines/
        if payload is None or "rows" not in payload:
            return False
        own = _listed(payload["files"]) if "files" in payload else set()
        return folders <= PREDICT_FOLDERS and files <= own | PREDICT_FILES
    raise ValueError(f"unknown output kind {kind!r}")


def check_replaceable(out: str | Path, kind: str) -> None:
    """Refuse an ``out`` that is a file, a link, a path under a file, or a non-empty folder
    that is not an earlier output of ``kind`` (cheap: commands call it before any work)."""
    out = Path(out)
    check_creatable(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise FerensError(f"{out}: exists and is not a folder; refusing to replace it")
    if out.is_dir() and any(out.iterdir()) and not is_own_output(out, kind):
        what = OUTPUT_NAMES.get(kind, f"an earlier ferens {kind} output")
        raise FerensError(f"{out}: is not {what} (it holds files that output does not list "
                          "as its own); refusing to replace it. Choose another --out")


# --- the swap --------------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2; False where the C library or the file system does not offer it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (True), or False where that is not offered."""
    return _renameat2(a, b, _RENAME_EXCHANGE)


def swap_into_place(new: Path, out: Path) -> None:
    """Put the finished folder ``new`` at ``out``. An old ``out`` is exchanged with it
    atomically and then deleted; without an atomic exchange it is first moved aside to
    ``previous`` beside ``new`` (where a re-run finds it after a kill) and deleted once the new
    one is in place."""
    new, out = Path(new), Path(out)
    if not (out.exists() or out.is_symlink()):
        try:
            if not _renameat2(new, out, _RENAME_NOREPLACE):
                os.rename(new, out)
        except FileExistsError:
            raise FerensError(f"{out}: appeared while ferens was writing it; run the command "
                              "again") from None
        return
    if exchange(new, out):
        shutil.rmtree(new)  # it now holds the old output
        return
    aside = new.parent / "previous"
    os.replace(out, aside)
    os.replace(new, out)
    shutil.rmtree(aside, ignore_errors=True)


def _work_folders(out: Path) -> Iterator[Path]:
    """Hidden folders beside ``out`` that ferens made for it and left behind (a kill): named
    ``.NAME.ferens-XXXXXXXX`` (or the older ``.NAME.old-XXXXXXXX`` / ``.NAME.KIND-XXXXXXXX``),
    plain folders owned by this user; the current ones hold ferens' marker file."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(ferens|old|ensemble|adjusted|report|"
                         rf"predictions|bundle|member)-{_MKDTEMP_TAIL}")
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match:
            continue
        info = entry.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        if match.group(1) == "ferens":
            mark = _read_json(entry / WORK_MARK)
            if mark is None or mark.get("out") != out.name:
                continue
        elif match.group(1) == "old" and {p.name for p in entry.iterdir()} != {"previous"}:
            continue
        yield entry


def recover(out: str | Path) -> None:
    """Undo what a killed swap left, then remove ferens' own leftover work folders beside
    ``out``: an old output moved aside while ``out`` is missing is moved back. Call it only
    while holding ``out``'s lock (no live writer then owns those folders)."""
    out = Path(out)
    for work in _work_folders(out):
        aside = work / "previous"
        if not (out.exists() or out.is_symlink()) and aside.is_dir() and not aside.is_symlink():
            os.rename(aside, out)
        shutil.rmtree(work, ignore_errors=True)


def work_folder(out: Path) -> Path:
    """A new work folder beside ``out`` holding ferens' marker; the output goes in ``output``."""
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.ferens-", dir=out.parent))
    (work / WORK_MARK).write_text(json.dumps({"out": out.name, "pid": os.getpid()}))
    (work / "output").mkdir(mode=0o755)
    return work / "output"


@contextmanager
def output_folder(out: str | Path, kind: str) -> Iterator[Path]:
    """Lock ``out``, clean up what an earlier killed run left beside it, yield a staging folder
    to write into, and swap it into place on success; on any failure the work folder is
    removed and ``out`` is left as it was."""
    out = Path(out)
    with folder_lock(out):
        recover(out)
        check_replaceable(out, kind)
        tmp = work_folder(out)
        try:
            yield tmp
            swap_into_place(tmp, out)
        finally:
            shutil.rmtree(tmp.parent, ignore_errors=True)
