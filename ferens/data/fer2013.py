"""FER2013 loading: the original CSV (plain or gzipped), cached as .npz, or an image-folder tree
(``ferens.data.imagefolder``: the Kaggle FER2013 layout, or any labelled face folder).

    >>> from ferens.data.fer2013 import load_fer2013
    >>> ds = load_fer2013("../shared/data/fer2013/fer2013.csv.gz")   # doctest: +SKIP
    >>> ds.split("train").images.shape                                # doctest: +SKIP
    (28709, 48, 48)

Splits follow the challenge: Training -> train, PublicTest -> val, PrivateTest -> test.
Every example keeps its original row index (``row_ids``) so predictions can be joined back.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from ferens.classes import NUM_CLASSES
from ferens.data.dataset import USAGE_TO_SPLIT, FerDataset, file_sha256, open_regular
from ferens.errors import FerensError

IMAGE_SIDE = 48
PIXELS = IMAGE_SIDE * IMAGE_SIDE
DEFAULT_DATA = Path("../shared/data/fer2013/fer2013.csv.gz")
FERPLUS_VOTES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                 "contempt", "unknown", "NF")
FERPLUS_TO_FER = {"anger": 0, "disgust": 1, "fear": 2, "happiness": 3, "sadness": 4,
                  "surprise": 5, "neutral": 6}
ROWS_PER_BLOCK = 2048
# The most a FER2013 CSV (or its inflated .gz) may hold: a row is at most ~9.2 KB (2,304
# pixels of up to 3 digits), so 1 GiB is over 110,000 rows, three times FER2013's 35,887.
MAX_CSV_BYTES = 2**30
UTF8_BOM = b"\xef\xbb\xbf"


def resolve_data_path(path: str | Path | None) -> Path:
    """The data path from the argument, else $FERENS_DATA, else the shared copy: a folder or
    a regular file (a FIFO or device would block the first read forever)."""
    chosen = Path(path or os.environ.get("FERENS_DATA") or DEFAULT_DATA)
    if not chosen.exists():
        raise FerensError(f"{chosen}: FER2013 data not found (pass --data PATH or set FERENS_DATA)")
    if not (chosen.is_dir() or chosen.is_file()):
        raise FerensError(f"{chosen}: not a regular file or a folder (a FIFO, socket or "
                          "device?); give fer2013.csv(.gz) or an image folder")
    return chosen


def load_fer2013(path: str | Path | None = None, cache: bool = True) -> FerDataset:
    """Load fer2013.csv(.gz) or an image folder, using an .npz cache keyed by content hash."""
    path = resolve_data_path(path)
    if path.is_dir():
        from ferens.data.imagefolder import load_image_folder

        return load_image_folder(path)
    _check_csv_size(path)
    folder = _cache_dir() if cache else None
    cache_file = folder / f"fer2013-{file_sha256(path)[:16]}.npz" if folder else None
    if cache_file is not None and cache_file.is_file():
        cached = _read_cache(cache_file, path)
        if cached is not None:
            return cached
    ds = _parse_csv(path)
    if cache_file is not None:
        _write_cache(cache_file, ds)
    return ds


# The data cache is optional: when it cannot be used, loading warns once and goes on without it.
_CACHE_WARNED: set[str] = set()


def _cache_warning(text: str) -> None:
    if text not in _CACHE_WARNED:
        _CACHE_WARNED.add(text)
        print(f"ferens: warning: {text}", file=sys.stderr, flush=True)


def _cache_dir() -> Path | None:
    """$FERENS_CACHE, else ~/.cache/ferens; None (no cache) when there is no home folder."""
    if os.environ.get("FERENS_CACHE"):
        return Path(os.environ["FERENS_CACHE"])
    try:
        return Path.home() / ".cache" / "ferens"
    except (RuntimeError, KeyError):  # no $HOME and no entry in the password database
        _cache_warning("no home folder for the data cache; parsing the data without it "
                       "(set FERENS_CACHE to a writable folder to cache it)")
        return None


def _read_cache(cache_file: Path, source: Path) -> FerDataset | None:
    """A cache entry, or None after deleting one that is damaged (truncated, half-written),
    so it is rebuilt now instead of breaking every later run."""
    try:
        with np.load(cache_file, allow_pickle=False) as z:
            ds = FerDataset(z["images"], z["labels"], z["usage"], z["row_ids"], source)
        n = len(ds.labels)
        if (ds.images.shape != (n, IMAGE_SIDE, IMAGE_SIDE) or ds.images.dtype != np.uint8
                or ds.usage.shape != (n,) or ds.row_ids.shape != (n,)):
            raise ValueError("arrays of the wrong shape")
        return ds
    except Exception as exc:  # zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError
        _cache_warning(f"{cache_file}: damaged data cache entry ({type(exc).__name__}); "
                       "parsing the data again and rebuilding it")
        try:
            cache_file.unlink()
        except OSError:
            pass
        return None


def _write_cache(cache_file: Path, ds: FerDataset) -> None:
    """Cache a parsed dataset; a full or read-only disk only costs the cache (one warning)."""
    from ferens.io import atomic_path

    try:
        with atomic_path(cache_file, ".npz") as tmp:
            np.savez(tmp, images=ds.images, labels=ds.labels, usage=ds.usage,
                     row_ids=ds.row_ids)
    except OSError as exc:
        _cache_warning(f"cannot write the data cache {cache_file.parent} "
                       f"({exc.strerror or exc}); going on without it (set FERENS_CACHE to "
                       "a writable folder to cache the parsed data)")


def _check_csv_size(path: Path) -> None:
    """Refuse a CSV file larger than any FER2013 CSV could plausibly be, before reading it."""
    size = path.stat().st_size
    if size > MAX_CSV_BYTES:
        raise FerensError(f"{path}: a {size / 2**20:,.0f} MiB file, more than a FER2013 CSV can "
                          f"be (at most {MAX_CSV_BYTES / 2**20:,.0f} MiB; the original is "
                          "287 MiB); refusing to read it")


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when gzipped, without a leading UTF-8 byte-order mark.

    At most MAX_CSV_BYTES are read or inflated: a small .gz that inflates to gigabytes is
    refused with one line instead of being decompressed whole."""
    try:
        with open_regular(path) as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
            fh.seek(0)
            with gzip.GzipFile(fileobj=fh) if gzipped else contextlib.nullcontext(fh) as src:
                raw = src.read(MAX_CSV_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a damaged deflate stream
        raise FerensError(f"{path}: cannot read ({exc})") from None
    if len(raw) > MAX_CSV_BYTES:
        raise FerensError(f"{path}: inflates to more than {MAX_CSV_BYTES / 2**20:,.0f} MiB, "
                          "more than a FER2013 CSV can be (the original is 287 MiB); "
                          "refusing to decompress it further")
    return raw[len(UTF8_BOM):] if raw.startswith(UTF8_BOM) else raw


def _parse_csv(path: Path) -> FerDataset:
    """Parse fer2013.csv: a byte-level fast path for valid files, else the validating path."""
    raw = _read_bytes(path)
    fast = _parse_canonical_bytes(raw)
    if fast is not None:
        images, labels, usage = fast
        return FerDataset(images, labels, usage, np.arange(len(labels), dtype=np.int64), path)
    return _parse_csv_validating(path, raw)


def _parse_canonical_bytes(raw: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Numpy-only parse of a well-formed ``emotion,pixels,Usage`` file; None if anything is off.

    Rows are parsed in blocks of ROWS_PER_BLOCK lines so peak memory stays near the file size.
    """
    header_end = raw.find(b"\n")
    if header_end < 0 or raw[:header_end].strip() != b"emotion,pixels,Usage":
        return None
    buf = np.frombuffer(raw, dtype=np.uint8)[header_end + 1:]
    if len(buf) == 0:
        return None
    line_ends = np.flatnonzero(buf == ord("\n"))
    if buf[-1] != ord("\n"):
        line_ends = np.append(line_ends, len(buf) - 1)
    blocks, start = [], 0
    for last in range(ROWS_PER_BLOCK, len(line_ends) + ROWS_PER_BLOCK, ROWS_PER_BLOCK):
        stop = int(line_ends[min(last, len(line_ends)) - 1]) + 1
        block = _parse_block(buf[start:stop])
        if block is None:
            return None
        blocks.append(block)
        start = stop
    images, labels, usage = (np.concatenate(parts) for parts in zip(*blocks, strict=True))
    return images, labels, usage


def _parse_block(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Parse complete lines: every digit run is a token, a valid row has 1 + 2304 of them.

    Any other character outside the Usage field, a wrong token count, a label outside 0-6,
    a pixel over 255 or an unknown Usage returns None, so the validating parser can name the
    exact row and problem.
    """
    newlines = np.flatnonzero(buf == ord("\n"))
    ends = newlines if buf[-1] == ord("\n") else np.append(newlines, len(buf))
    starts = np.concatenate(([0], ends[:-1] + 1))
    commas = np.flatnonzero(buf == ord(","))
    if len(commas) != 2 * len(starts):
        return None
    first, second = commas[0::2], commas[1::2]
    rows = np.arange(len(starts))
    if not ((first > starts).all() and (second < ends).all()
            and (np.searchsorted(ends, first) == rows).all()
            and (np.searchsorted(ends, second) == rows).all()):
        return None
    is_digit = (buf - ord("0")) < 10
    allowed = is_digit | (buf == ord(" ")) | (buf == ord(",")) | (buf == ord("\n"))
    odd = np.flatnonzero(~allowed)
    if len(odd) and (odd < second[np.searchsorted(ends, odd)]).any():
        return None
    token_start = np.flatnonzero(is_digit & ~np.concatenate(([False], is_digit[:-1])))
    token_end = np.flatnonzero(is_digit & ~np.concatenate((is_digit[1:], [False]))) + 1
    per_row = np.diff(np.searchsorted(token_start, np.append(starts, len(buf))))
    if (per_row != PIXELS + 1).any():
        return None
    length = token_end - token_start
    if length.max() > 3:
        return None
    padded = np.append(buf, np.zeros(2, dtype=np.uint8))
    digits = [padded[token_start + k].astype(np.int32) - ord("0") for k in range(3)]
    values = np.where(length == 1, digits[0], np.where(
        length == 2, digits[0] * 10 + digits[1], digits[0] * 100 + digits[1] * 10 + digits[2]))
    values = values.reshape(len(starts), PIXELS + 1)
    labels = values[:, 0].astype(np.int64)
    if (first - starts != length.reshape(len(starts), -1)[:, 0]).any() or labels.max() >= 7:
        return None
    if values[:, 1:].max() > 255:
        return None
    usage = np.array([buf[a + 1:b].tobytes().decode("ascii").strip()
                      for a, b in zip(second, ends, strict=True)])
    if not np.isin(usage, list(USAGE_TO_SPLIT)).all():
        return None
    images = values[:, 1:].astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    return images, labels, usage


def _parse_csv_validating(path: Path, raw: bytes) -> FerDataset:
    """pandas parse of ``emotion,pixels,Usage`` that names the first bad row and problem."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise FerensError(f"{path}: not an ASCII CSV ({exc})") from None
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise FerensError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in ("emotion", "pixels", "Usage") if c not in frame.columns]
    if missing:
        raise FerensError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")

    def fail(row: int, problem: str) -> FerensError:
        return FerensError(f"{path}: row {row} (line {row + 2}): {problem}")

    labels = pd.to_numeric(frame["emotion"], errors="coerce")
    bad = labels.isna() | ~labels.isin(range(NUM_CLASSES))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise fail(row, f"label {frame['emotion'].iat[row]!r} is not in 0-{NUM_CLASSES - 1}")
    usage = frame["Usage"].str.strip()
    unknown = ~usage.isin(list(USAGE_TO_SPLIT))
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise fail(row, f"unknown Usage {usage.iat[row]!r}; expected {list(USAGE_TO_SPLIT)}")

    pixels = frame["pixels"].str.strip()
    non_numeric = pixels.str.contains(r"[^0-9 ]", regex=True)
    if non_numeric.any():
        row = int(np.flatnonzero(non_numeric.to_numpy())[0])
        token = re.search(r"[^ ]*[^0-9 ][^ ]*", pixels.iat[row]).group(0)
        raise fail(row, f"non-numeric pixel value {token!r}")
    counts = pixels.str.split().str.len().to_numpy()
    wrong = counts != PIXELS
    if wrong.any():
        row = int(np.flatnonzero(wrong)[0])
        raise fail(row, f"expected {PIXELS} pixel values (48x48), found {counts[row]}")
    values = np.array(" ".join(pixels.to_list()).split(), dtype=np.int32)
    over = values > 255
    if over.any():
        first = int(np.flatnonzero(over)[0])
        raise fail(first // PIXELS, f"pixel value {values[first]} is outside 0-255")

    images = values.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    return FerDataset(images, labels.to_numpy(np.int64), usage.to_numpy().astype(str),
                      np.arange(len(frame), dtype=np.int64), path)


def read_ferplus_votes(path: str | Path) -> pd.DataFrame:
    """FER+ ``fer2013new.csv`` as a frame indexed by FER2013 row id (row i = row i)."""
    path = Path(path)
    if not path.is_file():
        raise FerensError(f"{path}: FER+ file not found")
    try:
        votes = pd.read_csv(path, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise FerensError(f"{path}: not a readable FER+ CSV ({exc})") from None
    missing = [c for c in ("Usage", *FERPLUS_VOTES) if c not in votes.columns]
    if missing:
        raise FerensError(f"{path}: missing FER+ column(s) {missing}")
    numeric = votes[list(FERPLUS_VOTES)].apply(pd.to_numeric, errors="coerce")
    if numeric.isna().any().any():
        row = int(np.flatnonzero(numeric.isna().any(axis=1).to_numpy())[0])
        raise FerensError(f"{path}: row {row} (line {row + 2}): non-numeric vote count")
    votes[list(FERPLUS_VOTES)] = numeric.astype(np.int64)
    votes.index.name = "row_id"
    return votes


def ferplus_majority(votes: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Majority FER+ label per row in FER2013 class order (-1 when not one of the 7) and its kind.

    kind is ``emotion``, ``tie`` (several classes share the top count), ``contempt``,
    ``unknown`` or ``not_a_face``.
    """
    counts = votes[list(FERPLUS_VOTES)].to_numpy()
    top = counts.max(axis=1)
    tie = (counts == top[:, None]).sum(axis=1) > 1
    winner = np.array(FERPLUS_VOTES)[counts.argmax(axis=1)]
    kind = np.where(tie, "tie", winner)
    kind = np.where(np.isin(kind, list(FERPLUS_TO_FER)), "emotion", kind)
    kind = np.where(kind == "NF", "not_a_face", kind)
    labels = np.array([FERPLUS_TO_FER.get(w, -1) for w in winner], dtype=np.int64)
    labels[kind != "emotion"] = -1
    return labels, kind.astype(str)


def check_ferplus_rows(votes: pd.DataFrame, ds: FerDataset, path: str | Path) -> None:
    """FER+ joins by fer2013.csv row: refuse data whose row ids are not CSV rows (an image
    folder's are file positions) and any row whose FER+ Usage is not its Usage in the data."""
    if Path(ds.source).is_dir():
        raise FerensError(f"{path}: FER+ votes join by fer2013.csv row, but {ds.source} is an "
                          "image folder, whose row ids are file positions; use fer2013.csv")
    if len(ds) and ds.row_ids.max() >= len(votes):
        raise FerensError(f"{path}: has {len(votes)} rows but the data has row id "
                          f"{int(ds.row_ids.max())}; FER+ rows must match fer2013.csv rows")
    usage = votes["Usage"].astype(str).str.strip().to_numpy()[ds.row_ids]
    wrong = np.flatnonzero(usage != ds.usage)
    if len(wrong):
        i = wrong[0]
        raise FerensError(f"{path}: row {int(ds.row_ids[i])} is {usage[i]!r} in FER+ but "
                          f"{str(ds.usage[i])!r} in {ds.source} ({len(wrong)} rows differ); "
                          "FER+ joins by fer2013.csv row order, so the files do not match")


def apply_ferplus_labels(ds: FerDataset, ferplus_path: str | Path) -> FerDataset:
    """Replace labels by the FER+ majority; drop rows without a clear emotion majority.

    All splits are relabelled and filtered, val and test too: such a member is scored on
    FER+ labels, not FER2013's."""
    votes = read_ferplus_votes(ferplus_path)
    check_ferplus_rows(votes, ds, ferplus_path)
    labels, kind = ferplus_majority(votes)
    keep = kind[ds.row_ids] == "emotion"
    out = ds.subset(keep)
    out.labels = labels[out.row_ids]
    return out
