"""Where a result came from: the commit of the ferens code that ran, and library versions.

Torch-free, so summaries, studies and the packing scripts can all call it."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
LIBRARIES = ("torch", "timm", "albumentations", "numpy", "scikit-learn", "opencv-python-headless")


def code_commit(folder: Path = PACKAGE_DIR) -> str | None:
    """The git commit of the checkout that holds ``folder`` (the running ferens code), with
    ``-dirty`` when files under ``folder`` differ from it; None outside a git checkout."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                                 text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if not head:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return head + ("-dirty" if dirty else "")


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Installed versions of the libraries that decide a run's numbers (None if absent)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
