"""File I/O every stage shares: paths checked before writing, atomic writes, JSON, folder locks.

A file is written to an unpredictably named temporary sibling and renamed over its name
(``atomic_path``), so a reader never sees half a file. JSON is written with stable formatting
and read back as one object, any problem being one line naming the file.

One process at a time writes a folder: ``folder_lock`` holds a lock file beside it
(``.NAME.ferens-lock``, in the folder's own parent, so processes with different temp folders or
users see the same lock) with ``filelock`` (an exclusive ``flock`` on Unix, which the kernel
drops when the holder dies, so a killed writer never blocks the next one), taken without
waiting, and removes it on release. The folder-replacing policy built on it is
``ferens.outputs``.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ferens.errors import FerensError

LOCK_SUFFIX = ".ferens-lock"
NAME_MAX = 255  # bytes in one file or folder name (ext4, xfs, btrfs, tmpfs, APFS, NTFS)


def check_creatable(path: str | Path) -> None:
    """Refuse a path that cannot be created because a file stands where a folder must be."""
    path = Path(path)
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise FerensError(f"{path}: the name {part[:24]}... is {len(os.fsencode(part))} "
                              f"bytes long; file systems allow {NAME_MAX}: choose a shorter name")
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


# --- atomic writes and JSON ------------------------------------------------------------------

@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A new, unpredictably named temporary sibling of `path` that replaces it when the block
    completes.

    The name is created exclusively (``mkstemp``: never an existing file, never through a link
    planted at a guessable name), so readers never see a half-written file and concurrent
    writers never share a temp name. `suffix` keeps writers that insist on an extension
    (np.savez: ``.npz``) on the same name. The file gets the usual permissions (0666 less the
    umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        os.close(fd)
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def current_umask() -> int:
    """The process umask (read from /proc where it can be, so no other thread ever creates a
    file under a changed one)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask



def write_json(path: str | Path, obj: dict) -> None:
    """Write JSON atomically with stable formatting."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> dict:
    """A JSON object from a file; anything else (a list, null, bad bytes, nesting too deep for
    the parser, an unreadable file) is one FerensError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FerensError(f"{path}: file not found")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FerensError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise FerensError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise FerensError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise FerensError(f"{path}: JSON nested too deeply to read") from None
    if not isinstance(value, dict):
        raise FerensError(f"{path}: expected a JSON object {{...}}, found "
                          f"{_json_kind(value)}")
    return value


def _json_kind(value) -> str:
    return {list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")



# --- the lock --------------------------------------------------------------------------------

def lock_path(folder: Path) -> Path:
    """The lock file of a folder: ``.NAME.ferens-lock`` in the folder's own parent, found by
    every process that writes the folder whatever its temp folder or user."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}{LOCK_SUFFIX}"


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and missing parents; returns those created, outermost first."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()][::-1]
    made = []
    for path in missing:
        try:
            path.mkdir()
            made.append(path)
        except FileExistsError:
            pass
        except OSError as exc:
            raise FerensError(f"{path}: cannot create the folder ({exc.strerror})") from None
    return made


def _acquire(path: Path, folder: Path) -> tuple[FileLock, tuple[int, int]]:
    """The held lock on the lock file at ``path`` and that file's (device, inode). Never
    through a link (filelock opens with O_NOFOLLOW), never a FIFO or device; no soft-lock
    fallback (a marker file a killed process would leave behind)."""
    held: list[tuple[int, int]] = []

    def plain_file(fd: int) -> None:  # filelock releases the lock when this raises
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FerensError(f"{path}: the lock file of {folder} is not a plain file; delete "
                              "it and run the command again")
        held.append((info.st_dev, info.st_ino))

    for _ in range(3):  # a holder that removed the file as we opened it: lock the one now there
        lock = FileLock(path, blocking=False, fallback_to_soft=False, on_acquired=plain_file)
        try:
            lock.acquire()
            return lock, held[-1]
        except Timeout:
            continue
        except FerensError:
            raise
        except OSError as exc:  # ELOOP: a link planted at the lock's name; EACCES: not ours
            raise FerensError(f"{path}: cannot open the lock file of {folder} "
                              f"({exc.strerror or exc}); if no ferens process is writing "
                              f"{folder}, delete it and run the command again") from None
    raise FerensError(f"{folder}: another ferens process is writing it; wait for it to finish "
                      "(or stop it) and run the command again")


def _release(lock: FileLock, path: Path, identity: tuple[int, int]) -> None:
    """Remove the lock file while still holding it (a process that opened it meanwhile finds
    it unlinked once it gets the lock, and retries on the new one), then release."""
    try:
        now = os.stat(path, follow_symlinks=False)
        if (now.st_dev, now.st_ino) == identity:
            os.unlink(path)
    except OSError:
        pass
    finally:
        lock.release()


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` or fail at once with one line when another process
    holds it. The lock dies with its process; parent folders it had to create for its lock
    file are removed again when they are left empty."""
    folder = Path(folder)
    check_creatable(folder)  # a file where a folder must be: one line, before any work
    made = _make_parents(folder.parent)
    try:
        path = lock_path(folder)
        lock, identity = _acquire(path, folder)
        try:
            yield
        finally:
            _release(lock, path, identity)
    finally:
        for parent in reversed(made):
            try:
                parent.rmdir()
            except OSError:
                pass
