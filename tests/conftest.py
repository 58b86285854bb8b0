"""Shared fixtures: tiny synthetic FER2013 files so tests never need the real data."""

from __future__ import annotations

import gzip
from pathlib import Path

import cv2
import numpy as np
import pytest

USAGES = ("Training", "PublicTest", "PrivateTest")


def synthetic_faces(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """48x48 uint8 images whose brightness pattern depends on the label (learnable, tiny)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(labels), 48, 48))
    for i, label in enumerate(labels):
        images[i, label * 6:label * 6 + 6, :] += 150
    return images.astype(np.uint8)


def fer_rows(per_class: dict[str, int], seed: int = 0) -> list[tuple[int, str, str]]:
    """(label, pixel string, usage) rows with ``per_class[usage]`` examples of every class."""
    rows = []
    for usage in USAGES:
        labels = np.repeat(np.arange(7), per_class[usage])
        for label, img in zip(labels, synthetic_faces(labels, seed + len(rows)), strict=True):
            rows.append((int(label), " ".join(map(str, img.ravel())), usage))
    return rows


def write_fer_csv(path: Path, rows: list[tuple], header: str = "emotion,pixels,Usage") -> Path:
    text = header + "\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FERENS_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("FERENS_DATA", raising=False)


@pytest.fixture
def tiny_rows() -> list[tuple]:
    return fer_rows({"Training": 6, "PublicTest": 2, "PrivateTest": 2})


@pytest.fixture
def tiny_csv(tmp_path, tiny_rows) -> Path:
    return write_fer_csv(tmp_path / "fer2013.csv", tiny_rows)


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run ``ferens ARGS`` in-process; returns (exit code, stdout, stderr)."""
    import sys

    from ferens.cli import main

    monkeypatch.setattr(sys, "argv", ["ferens", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def train_interrupted(cfg, epoch: int, monkeypatch) -> None:
    """Train ``cfg`` until a Ctrl-C at the start of ``epoch`` (its checkpoints stay)."""
    import ferens.train.member as train_module

    real = train_module.train_one_epoch

    def interrupted(parts, loader, config, current, *rest):
        if current == epoch:
            raise KeyboardInterrupt
        return real(parts, loader, config, current, *rest)

    monkeypatch.setattr(train_module, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_module.train_member(cfg, show_progress=False)
    monkeypatch.setattr(train_module, "train_one_epoch", real)


def train_interrupted_then_resumed(cfg, epoch: int, monkeypatch) -> None:
    """Train ``cfg`` until a Ctrl-C at the start of ``epoch``, then ``--resume`` it to the end."""
    import ferens.train.member as train_module

    train_interrupted(cfg, epoch, monkeypatch)
    train_module.train_member(cfg, resume=True, show_progress=False)


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A tiny 1-bit PNG whose header declares ``width`` x ``height`` pixels (its pixel data is
    a stub: nothing here is meant to be decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def face_png(tmp_path_factory) -> Path:
    """A flat grey 48x48 PNG face (predict with --no-detect)."""
    path = tmp_path_factory.mktemp("face") / "face.png"
    cv2.imwrite(str(path), np.full((48, 48), 100, np.uint8))
    return path
