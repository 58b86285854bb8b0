"""The in-memory dataset every loader returns, its splits, and reading input files safely.

Torch-free and importing no other ferens loader, so ``ferens.data.fer2013`` (FER2013's CSV) and
``ferens.data.imagefolder`` (face folders) both build on it without importing each other.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ferens.classes import CLASS_NAMES
from ferens.errors import FerensError

USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
SPLIT_TO_USAGE = {v: k for k, v in USAGE_TO_SPLIT.items()}
USAGES = ("Training", "PublicTest", "PrivateTest")
# An image folder's top folders and the official split each one holds.
FOLDER_SPLITS = {"train": "Training", "val": "PublicTest", "validation": "PublicTest",
                 "test": "PrivateTest"}
FRACTION_OPTION = {"PublicTest": "--val-fraction", "PrivateTest": "--test-fraction"}


@dataclass
class FerDataset:
    """Images (N,48,48) uint8 with labels, official Usage and original row ids."""

    images: np.ndarray
    labels: np.ndarray
    usage: np.ndarray
    row_ids: np.ndarray
    source: Path
    files: np.ndarray | None = None  # an image folder's files (relative paths), row by row
    class_names: tuple[str, ...] = CLASS_NAMES  # label order; an image folder's own classes

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask: np.ndarray) -> FerDataset:
        return FerDataset(self.images[mask], self.labels[mask], self.usage[mask],
                          self.row_ids[mask], self.source,
                          None if self.files is None else self.files[mask], self.class_names)

    def split(self, name: str) -> FerDataset:
        """One of ``train``, ``val``, ``test``; an empty split is an error."""
        if name not in SPLIT_TO_USAGE:
            raise FerensError(f"unknown split {name!r}; expected train, val or test")
        part = self.subset(self.usage == SPLIT_TO_USAGE[name])
        if len(part) == 0:
            raise FerensError(f"{self.source}: split {name} ({SPLIT_TO_USAGE[name]}) is empty"
                              + (folder_split_hint(name) if Path(self.source).is_dir() else ""))
        return part

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.class_names))


def folder_split_hint(split: str) -> str:
    """How an image folder gives each split its images (the end of an empty-split error)."""
    usage = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}[split]
    folders = "/".join(k for k, v in FOLDER_SPLITS.items() if v == usage)
    extra = ("" if split == "train" else
             f", or pass {FRACTION_OPTION[usage]} F to hold out a stratified share F of "
             f"train/ as {split}")
    return (f". An image folder names each image's split by its top folder, "
            f"train/<class>/, val/<class>/ and test/<class>/ (so {folders}/<class>/*.png for "
            f"{split}), or by the Kaggle file prefix Training_, PublicTest_, PrivateTest_ "
            f"({usage}_*.png), which wins over the folder{extra}")


def open_regular(path: Path):
    """``path`` opened for reading in binary, refused with one line unless it is a regular
    file (opened without blocking, so a FIFO swapped in after a check cannot hang ferens)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FerensError(f"{path}: cannot read ({exc.strerror})") from None
    fh = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        fh.close()
        raise FerensError(f"{path}: not a regular file (a FIFO, socket or device?)")
    return fh


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a regular file (cache keys, bundle checksums)."""
    with open_regular(path) as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
