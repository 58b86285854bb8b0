"""Which runs a report covers and which of them get the detailed, per-run plots."""

from __future__ import annotations

import glob
from fnmatch import fnmatchcase
from pathlib import Path

from ferens.errors import FerensError

GLOB_CHARS = ("*", "?", "[")


def expand_run_paths(args: list[str | Path]) -> list[Path]:
    """Run folders from paths and glob patterns (``results/*/strong-*``, ``runs/**``).

    A pattern keeps the folders with a config.json that it matches; a pattern matching none
    is an error. The same folder named twice is reported once.
    """
    paths: list[Path] = []
    for arg in args:
        text = str(arg)
        if any(c in text for c in GLOB_CHARS) and not Path(text).exists():
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))
                       if (Path(m) / "config.json").is_file()]
            if not matches:
                raise FerensError(f"{text}: no run folder (with a config.json) matches")
            paths += matches
        else:
            paths.append(Path(text))
    seen, unique = set(), []
    for path in paths:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def detailed_runs(names: list[str], order: list[int], top: int,
                  patterns: list[str] | tuple[str, ...] = ()) -> list[int]:
    """The first `top` runs of `order` and every run whose name (or, for a name with its
    folders, ``ensembles/stack``, the last part) matches a glob in `patterns`, in `order`."""
    if top < 0:
        raise FerensError(f"--top {top}: expected 0 or more")
    chosen = set(order[:top])
    for pattern in patterns:
        matched = {i for i, n in enumerate(names)  # "stack" also matches "ensembles/stack"
                   if fnmatchcase(n, pattern) or fnmatchcase(n.rsplit("/", 1)[-1], pattern)}
        if not matched:
            raise FerensError(f"--show {pattern!r}: no run name matches")
        chosen |= matched
    return [i for i in order if i in chosen]
