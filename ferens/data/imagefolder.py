"""Labelled face folders: ``train/<class>/*``, optional ``val/<class>/*`` and ``test/<class>/*``,
with any class names and any number of classes (two or more).

    >>> from ferens.data.fer2013 import load_fer2013
    >>> ds = load_fer2013("my_faces")             # a folder: read here   # doctest: +SKIP
    >>> ds.class_names                             # ('calm', 'joy', 'rage')  # doctest: +SKIP

Class names are the class folders' names, sorted, except that a folder whose classes are
FER2013's seven (any case: Kaggle's ``angry``, ``disgust``...) keeps FER2013's names and label
order, so the Kaggle FER2013 layout reads as FER2013 does. In that layout a file prefix
``Training_``, ``PublicTest_`` or ``PrivateTest_`` names the split and wins over the folder.

Every image of a folder must be square, of one size and one colour kind (all gray or all
colour); colour is converted to gray and other sizes are resized to 48x48. Each check reads
only the image header first. Hidden files (``.DS_Store``) are skipped; anything else that is
not an image in a class folder, an empty class folder, a class of val/ or test/ that train/
lacks (or the reverse), or a single class is one line naming the file or folder.

A folder without ``val/`` (or ``test/``) gets one from ``holdout``: a stratified share of
train/ (scikit-learn's ``train_test_split``, fixed seed 0, so every member of a study scores
on the same rows whatever its own seed).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ferens.classes import CLASS_NAMES
from ferens.data.dataset import (
    FOLDER_SPLITS,
    FRACTION_OPTION,
    USAGES,
    FerDataset,
    folder_split_hint,
    open_regular,
)
from ferens.errors import FerensError

FACE_SIDE = 48
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
# The largest face image read (from its header, before decoding): 512x512 is ten times the
# side of FER2013's faces; a larger image in a face folder is a mistake or a bomb.
MAX_SIDE = 512
SPLIT_FOLDERS = {"Training": "train/", "PublicTest": "val/", "PrivateTest": "test/"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F", "La"}
HOLDOUT_SEED = 0


def _split_of_file(name: str, top: str) -> str | None:
    for usage in USAGES:
        if name.startswith(usage + "_"):
            return usage
    return FOLDER_SPLITS.get(top)


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _list_images(root: Path) -> list[tuple[Path, str, str]]:
    """(file, class folder name, usage) for every image, after the layout checks."""
    found = []
    for top in _visible(root):
        if not top.is_dir():
            continue  # a README or licence beside the split folders is not read
        for cls in _visible(top):
            if not cls.is_dir():
                raise FerensError(f"{cls}: a file directly in {top.name}/; images go in "
                                  f"{top.name}/<class>/")
            files = _visible(cls)
            if not files:
                raise FerensError(f"{cls}: empty class folder (no images); remove it or add "
                                  "images")
            for path in files:
                if path.is_dir():
                    raise FerensError(f"{path}: a folder inside a class folder; images go "
                                      f"directly in {top.name}/{cls.name}/")
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    raise FerensError(f"{path}: not an image file (expected "
                                      f"{', '.join(sorted(IMAGE_SUFFIXES))}); move it out of "
                                      "the face folder")
                usage = _split_of_file(path.name, top.name.lower())
                if usage is None:
                    raise FerensError(f"{path}: cannot tell the split (folder {top.name!r}, no "
                                      f"Kaggle prefix); name the top folders "
                                      f"{sorted(FOLDER_SPLITS)} or prefix the files "
                                      f"{[u + '_' for u in USAGES]}")
                found.append((path, cls.name, usage))
    if not found:
        raise FerensError(f"{root}: no images found under <split>/<class>/ (train/<class>/*.png, "
                          "optional val/ and test/)")
    return found


def class_names_of(names: set[str]) -> tuple[str, ...]:
    """Label order: FER2013's for its seven classes (any case), else sorted folder names."""
    fer = {c.lower(): c for c in CLASS_NAMES}
    if {n.lower() for n in names} == set(fer) and len(names) == len(fer):
        return CLASS_NAMES
    return tuple(sorted(names))


def _label_of(names: tuple[str, ...]) -> dict[str, int]:
    if names == CLASS_NAMES:
        return {c.lower(): i for i, c in enumerate(CLASS_NAMES)}
    return {c: i for i, c in enumerate(names)}


def _check_class_sets(root: Path, found: list[tuple[Path, str, str]]) -> tuple[str, ...]:
    """Every split that has images holds the same classes as train/; at least two."""
    by_split: dict[str, set[str]] = {}
    for _, cls, usage in found:
        by_split.setdefault(usage, set()).add(cls)
    train = by_split.get("Training")
    if not train:
        raise FerensError(f"{root}: no training images" + folder_split_hint("train"))
    if len(train) < 2:
        raise FerensError(f"{root}: train/ has one class only ({sorted(train)[0]!r}); a "
                          "classifier needs two or more class folders")
    fold = class_names_of(train) == CLASS_NAMES  # Kaggle's lower-case FER2013 names
    key = (lambda c: c.lower()) if fold else (lambda c: c)
    known = {key(c) for c in train}
    for usage, classes in by_split.items():
        if usage == "Training":
            continue
        where = SPLIT_FOLDERS[usage]
        extra = sorted(c for c in classes if key(c) not in known)
        if extra:
            raise FerensError(f"{root / where.rstrip('/') / extra[0]}: class {extra[0]!r} is "
                              f"in {where} but not in train/ (train/ has "
                              f"{sorted(train)}); the splits must share one label set")
        lacking = sorted(c for c in train if key(c) not in {key(x) for x in classes})
        if lacking:
            raise FerensError(f"{root}: {where} has no images of class {lacking[0]!r} "
                              f"({len(lacking)} of train/'s {len(train)} classes missing: "
                              f"{lacking[:5]}); the splits must share one label set")
    return class_names_of(train)


def _image_kind(path: Path):
    """(size, is_gray) from the header of one image, without decoding its pixels."""
    from PIL import Image


    try:
        with open_regular(path) as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fh) as im:
                return im.size, im.mode in GRAY_MODES
    except Image.DecompressionBombError:
        raise FerensError(f"{path}: image declares more pixels than PIL will decode (a "
                          "decompression bomb?); expected a face of at most "
                          f"{MAX_SIDE}x{MAX_SIDE}") from None
    except FerensError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... on damage
        raise FerensError(f"{path}: unreadable image ({type(exc).__name__}: "
                          f"{str(exc)[:200]})") from None


def _check_kind(path: Path, size, gray: bool, first: Path, first_size, first_gray) -> None:
    w, h = size
    if w > MAX_SIDE or h > MAX_SIDE:
        raise FerensError(f"{path}: image is {w}x{h}, larger than a face image may be "
                          f"({MAX_SIDE}x{MAX_SIDE}; FER2013's are 48x48); crop the faces first")
    if w != h:
        raise FerensError(f"{path}: image is {w}x{h}, not square; crop the faces square "
                          "(they are resized to 48x48)")
    if size != first_size:
        raise FerensError(f"{path}: image is {w}x{h} but {first} is "
                          f"{first_size[0]}x{first_size[1]}; every face in the folder must "
                          "have one size")
    if gray != first_gray:
        kinds = ("grayscale", "colour")
        raise FerensError(f"{path}: image is {kinds[not gray]} but {first} is "
                          f"{kinds[not first_gray]}; every face in the folder must be of one "
                          "kind (convert them all to grayscale)")


def _read_face(path: Path) -> np.ndarray:
    """One face as 48x48 uint8 gray (colour converted, other sizes resized)."""
    from PIL import Image

    from ferens.deploy.face_crops import to_face

    try:
        with open_regular(path) as fh, Image.open(fh) as im:
            return to_face(np.asarray(im.convert("L")))
    except FerensError:
        raise
    except Exception as exc:
        raise FerensError(f"{path}: unreadable image ({type(exc).__name__}: "
                          f"{str(exc)[:200]})") from None


def load_image_folder(root: Path):
    """A labelled face folder as a FerDataset (row ids = file positions, files recorded)."""

    found = _list_images(root)
    names = _check_class_sets(root, found)
    label_of = _label_of(names)
    fold = names == CLASS_NAMES
    kinds = [_image_kind(path) for path, _, _ in found]
    (first_size, first_gray), first = kinds[0], found[0][0]
    for (path, _, _), (size, gray) in zip(found, kinds, strict=True):
        _check_kind(path, size, gray, first, first_size, first_gray)
    images = np.stack([_read_face(path) for path, _, _ in found])
    labels = np.array([label_of[c.lower() if fold else c] for _, c, _ in found], dtype=np.int64)
    usage = np.array([u for _, _, u in found]).astype(str)
    files = np.array([p.relative_to(root).as_posix() for p, _, _ in found]).astype(str)
    return FerDataset(images, labels, usage, np.arange(len(found), dtype=np.int64), root,
                      files, names)


def holdout(ds, split: str, fraction: float, of_rows: int | None = None):
    """``ds`` with a stratified share ``fraction`` of its Training rows (of ``of_rows`` rows:
    the training rows before any split was held out) moved to ``split`` (val or test), for a
    folder that has no such split; fraction 0 returns ``ds``."""
    from sklearn.model_selection import train_test_split

    usage = {"val": "PublicTest", "test": "PrivateTest"}[split]
    option = FRACTION_OPTION[usage]
    if not fraction:
        return ds
    if (ds.usage == usage).any():
        raise FerensError(f"{ds.source}: already has a {split} split "
                          f"({int((ds.usage == usage).sum())} rows); {option} is for an image "
                          f"folder without {split}/")
    train = np.flatnonzero(ds.usage == "Training")
    counts = np.bincount(ds.labels[train], minlength=len(ds.class_names))
    if counts.min() < 2:
        rare = ds.class_names[int(counts.argmin())]
        raise FerensError(f"{ds.source}: {option} {fraction}: class {rare!r} has "
                          f"{int(counts.min())} training image(s); a stratified split needs "
                          "at least two of every class")
    count = round(fraction * (of_rows or len(train)))
    try:
        _, held = train_test_split(train, test_size=count, stratify=ds.labels[train],
                                   random_state=HOLDOUT_SEED)
    except ValueError as exc:
        raise FerensError(f"{ds.source}: {option} {fraction}: {exc}") from None
    out_usage = np.where(np.isin(np.arange(len(ds.usage)), held), usage, ds.usage).astype(str)
    moved = np.bincount(ds.labels[held], minlength=len(ds.class_names))
    if (moved == 0).any():
        raise FerensError(f"{ds.source}: {option} {fraction} leaves class "
                          f"{ds.class_names[int(np.argmin(moved))]!r} without {split} rows; "
                          "use a larger fraction or give a folder")
    from dataclasses import replace

    return replace(ds, usage=out_usage)
