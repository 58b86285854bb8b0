"""Pack FER2013, the FER+ votes and the missing wheels into carry parts for a lent GPU machine.

    nice -n 19 .venv/bin/python experiments/gpu/pack.py            # -> .gpu-carry/part1, part2

Each device call may move 64 MiB: the repo's working tree (tracked and untracked-not-ignored
files) plus the paths named in ``carry``. The images are coded losslessly with the codec in
``kit.py`` and split so that every call fits; part 1 also holds the wheels the device lacks
(installed into /tmp/site by ``session.sh 1``), the last part the labels, usage and the FER+
votes. Every file's sha256 and the sha256 of the image, label and usage arrays are recorded in
each part's manifest.json; ``session.sh`` checks them after unpacking. See README.md here.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kit  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"
DEFAULT_FERPLUS = REPO.parent / "shared" / "data" / "ferplus" / "fer2013new.csv"
MIB = 1 << 20
CALL_LIMIT = 64 * MIB
# albumentations and imbalanced-learn with everything they need that the device image
# ('cuda', /work/.library/device/KINDS.md) lacks, or holds too old (typing-extensions: pydantic
# needs >= 4.16); versions are this interpreter's, i.e. the ones ferens is tested with.
WHEEL_PACKAGES = ("albumentations", "albucore", "pydantic", "pydantic-core", "annotated-types",
                  "typing-inspection", "typing-extensions", "stringzilla", "simsimd",
                  "imbalanced-learn", "sklearn-compat")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


def fail(message: str) -> None:
    print(f"pack: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def tree_size(repo: Path) -> int:
    """Bytes of what a device call sends besides carry: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True).stdout
    total = 0
    for name in {n for n in out.decode().split("\0") if n}:
        path = repo / name
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def check_ignored(repo: Path, carry: Path) -> None:
    probe = carry / "part1" / "manifest.json"
    try:
        rel = probe.resolve().relative_to(repo.resolve())
    except ValueError:
        return  # outside the repo: it never travels unless carried
    if subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", str(rel)]).returncode:
        fail(f"{carry} is not git-ignored in {repo}: it would travel with every call and could be "
             "committed; add it to .gitignore")


def wheel_requirements() -> list[str]:
    reqs = []
    for name in WHEEL_PACKAGES:
        try:
            reqs.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            fail(f"{name} is not installed in {sys.executable}; run pack.py with the repo's .venv")
    return reqs


def fetch_wheels(cache: Path) -> list[Path]:
    """The WHEEL_PACKAGES wheels for CPython 3.12 manylinux x86-64, downloaded once into cache."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = []
    for req in wheel_requirements():
        name, version = req.split("==")
        stem = name.replace("-", "_").lower()
        found = [w for w in cache.glob("*.whl")
                 if w.name.lower().startswith(f"{stem}-{version}-")]
        if not found:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                   "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                   *(a for p in PLATFORMS for a in ("--platform", p)), "-d", str(cache), req]
            if subprocess.run(cmd).returncode:
                fail(f"pip download {req} failed")
            found = [w for w in cache.glob("*.whl")
                     if w.name.lower().startswith(f"{stem}-{version}-")]
        if len(found) != 1:
            fail(f"expected one wheel for {req} in {cache}, found {[w.name for w in found]}")
        wheels.append(found[0])
    return wheels


def load_data(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, str | None]:
    """(images, labels, usage codes, sha256 of the CSV text when it is the canonical text)."""
    sys.path.insert(0, str(REPO))
    from ferens.data import _read_bytes, load_fer2013

    ds = load_fer2013(path, cache=False)
    codes = kit.usage_codes(ds.usage)
    csv_sha = None
    if path.is_file():
        text_sha = kit.sha256_bytes(_read_bytes(path))
        if text_sha == kit.sha256_bytes(kit.csv_text(ds.images, ds.labels, codes)):
            csv_sha = text_sha
    return ds.images, ds.labels.astype(np.uint8), codes, csv_sha


def npz_bytes(arrays: dict[str, np.ndarray], compressed: bool = False) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def split_points(lengths: np.ndarray, fixed: list[int], parts: int) -> list[int]:
    """Image index boundaries that give every part (its fixed files plus its images) about the
    same size."""
    cum = np.concatenate([[0], np.cumsum(lengths.astype(np.int64))])
    target = (cum[-1] + sum(fixed)) / parts
    bounds, used = [0], 0.0
    for k in range(parts - 1):
        used += target - fixed[k]
        bounds.append(int(np.clip(np.searchsorted(cum, used), bounds[-1], len(lengths))))
        used = cum[bounds[-1]]
    return bounds + [len(lengths)]


def pack(data: Path, out: Path, parts: int = 2, ferplus: Path | None = None,
         wheels: list[Path] | None = None, repo: Path = REPO, limit: int = CALL_LIMIT) -> dict:
    """Write ``out/part1..partN``; returns the sizes. Refuses (SystemExit 2) when a call with
    the tree and a part would exceed ``limit``."""
    check_ignored(repo, out)
    images, labels, codes, csv_sha = load_data(data)
    coded = kit.encode_images(images)
    lengths = coded["lengths"].astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    files: dict[int, dict[str, bytes | Path]] = {k: {} for k in range(1, parts + 1)}
    for w in wheels or []:
        files[1][f"wheels/{w.name}"] = w
    files[parts]["meta.npz"] = npz_bytes({"labels": labels, "usage": codes}, compressed=True)
    if ferplus is not None and ferplus.is_file():
        files[parts]["fer2013new.csv.xz"] = lzma.compress(ferplus.read_bytes(),
                                                           preset=9 | lzma.PRESET_EXTREME)

    def size(v: bytes | Path) -> int:
        return v.stat().st_size if isinstance(v, Path) else len(v)

    fixed = [sum(size(v) for v in files[k].values()) for k in range(1, parts + 1)]
    bounds = split_points(lengths, fixed, parts)
    for k in range(1, parts + 1):
        lo, hi = bounds[k - 1], bounds[k]
        files[k][f"images-{k}.npz"] = npz_bytes({
            "format": coded["format"], "act_edges": coded["act_edges"], "freq": coded["freq"],
            "lengths": coded["lengths"][lo:hi], "data": coded["data"][starts[lo]:starts[hi]],
            "first_row": np.array(lo)})
    manifest = {"format": kit.FORMAT, "parts": parts, "rows": int(len(labels)),
                "bounds": bounds, "source": str(data), "csv_sha256": csv_sha,
                **kit.array_hashes(images, labels, codes),
                "part_files": {str(k): {name: (kit.file_sha256(v) if isinstance(v, Path)
                                               else kit.sha256_bytes(v))
                                        for name, v in files[k].items()}
                               for k in files}}
    tree = tree_size(repo)
    sizes = {k: sum(size(v) for v in files[k].values()) + 4096 for k in files}  # + manifest
    wheel_bytes = sum(size(v) for n, v in files[1].items() if n.startswith("wheels/"))
    report = {"tree": tree, "wheels": wheel_bytes, "parts": sizes, "limit": limit,
              "images": int(starts[-1]), "raw_images": int(images.size)}
    for k, s in sizes.items():
        print(f"pack: part{k}: {s / MIB:.2f} MiB; with the tree ({tree / MIB:.2f} MiB) a call "
              f"sends {(s + tree) / MIB:.2f} of {limit / MIB:.0f} MiB")
    print(f"pack: images {starts[-1] / MIB:.2f} MiB coded from {images.size / MIB:.2f} MiB raw "
          f"({starts[-1] / max(images.size, 1):.3f}); wheels {wheel_bytes / MIB:.2f} MiB")
    over = [k for k, s in sizes.items() if s + tree > limit]
    if over:
        fail(f"part{over[0]} ({sizes[over[0]] / MIB:.2f} MiB) plus the tree "
             f"({tree / MIB:.2f} MiB) exceeds the {limit / MIB:.0f} MiB a device call may send; "
             f"try --parts {parts + 1}")
    for k in range(1, parts + 1):
        part = out / f"part{k}"
        if part.exists():
            shutil.rmtree(part)
        (part / "wheels").mkdir(parents=True) if k == 1 and wheels else part.mkdir(parents=True)
        for name, v in files[k].items():
            if isinstance(v, Path):
                shutil.copy2(v, part / name)
            else:
                (part / name).write_bytes(v)
        (part / kit.MANIFEST).write_text(json.dumps(manifest | {"part": k}, indent=1))
    for stale in sorted(out.glob("part*")):
        if stale.name[4:].isdigit() and int(stale.name[4:]) > parts:
            shutil.rmtree(stale)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--ferplus", type=Path, default=DEFAULT_FERPLUS,
                        help="FER+ votes file; skipped when missing")
    parser.add_argument("--out", type=Path, default=REPO / ".gpu-carry")
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument("--no-wheels", action="store_true")
    parser.add_argument("--wheel-cache", type=Path, default=None,
                        help="[OUT/wheel-cache] where downloaded wheels are kept")
    parser.add_argument("--limit-mib", type=float, default=CALL_LIMIT / MIB)
    args = parser.parse_args()
    if args.parts < 1:
        fail("--parts must be >= 1")
    wheels = None if args.no_wheels else fetch_wheels(args.wheel_cache
                                                      or args.out / "wheel-cache")
    pack(args.data, args.out, args.parts, args.ferplus, wheels, REPO,
         int(args.limit_mib * MIB))


if __name__ == "__main__":
    main()
