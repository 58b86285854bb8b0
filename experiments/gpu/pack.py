"""Pack FER2013 (and, if asked, wheels) for a lent GPU machine, and slim what travels.

    python experiments/gpu/pack.py             # slim the index, write .gpu-carry/part1..N
    python experiments/gpu/pack.py --status    # what a call sends now, and how many calls
    python experiments/gpu/pack.py --restore   # after the calls: the index as it was
    python experiments/gpu/pack.py --import FILES_AT/ferens-gpu-results.tar.gz

Each device call sends the repo's working tree as git sees it (tracked files, and untracked
files that git does not ignore) plus the paths named in ``carry``, 64 MiB in all. The committed
results grow with every study (47 MiB at the commit that added this), and they travel with
every call although the device needs almost none of them. So before the calls this script
*slims the index*: ``git rm --cached`` of every tracked file under ``results/`` except what the
GPU study reads there (its ``results_dir``, its members' ``teacher`` folders and its
``extra_runs``), and a ``results/.gitignore`` of ``*`` (which ignores itself too) so the
untracked copies do not travel either. Nothing on disk changes. ``--restore`` puts the index
back (``git reset`` of exactly those paths to the commit they were slimmed at) and removes the
``.gitignore``; ``--import`` restores first. Until then ``git status`` shows the results as
deleted: DO NOT COMMIT while slimmed. Slimming refuses when changes under results/ are staged.

The images are coded losslessly with the codec in ``kit.py`` and split into as few parts as
the 64 MiB per call allow (``--parts auto``; the tree travels with each call): part 1 holds the
wheels if ``--wheels`` (albumentations and imbalanced-learn, which only the CPU recipes and
oversampling need; the GPU study's torch recipes need neither), the last part the labels, usage
and FER+ votes. Every file's sha256 and the sha256 of the image, label and usage arrays are
recorded in each part's manifest.json; ``session.sh`` checks them after unpacking.
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
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kit  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fer2013" / "fer2013.csv.gz"
DEFAULT_FERPLUS = REPO.parent / "shared" / "data" / "ferplus" / "fer2013new.csv"
DEFAULT_STUDY = REPO / "experiments" / "study_gpu.toml"
MIB = 1 << 20
CALL_LIMIT = 64 * MIB
MAX_PARTS = 8
MANIFEST_SLACK = 4096  # each part's manifest.json, written after the sizes are known
SLIM_STATE = "slim.json"
RESULTS = "results"
IGNORE_TEXT = ("# written by experiments/gpu/pack.py while the index is slimmed for a GPU "
               "session, so that\n# untracked results do not travel to the device; "
               "`pack.py --restore` removes it\n*\n")
# albumentations and imbalanced-learn with everything they need that the device image
# ('cuda', /work/.library/device/KINDS.md) lacks, or holds too old (typing-extensions: pydantic
# needs >= 4.16; filelock: ferens.io needs >= 4.3, the image's version is not recorded);
# versions are this interpreter's, i.e. the ones ferens is tested with.
WHEEL_PACKAGES = ("albumentations", "albucore", "pydantic", "pydantic-core", "annotated-types",
                  "typing-inspection", "typing-extensions", "stringzilla", "simsimd",
                  "imbalanced-learn", "sklearn-compat", "filelock")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


def fail(message: str) -> None:
    print(f"pack: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def git(repo: Path, *args: str, stdin: bytes | None = None) -> str:
    """Run git in ``repo`` (pathspecs taken literally); a failure is one clear error."""
    out = subprocess.run(["git", "--literal-pathspecs", "-C", str(repo), *args],
                         input=stdin, capture_output=True)
    if out.returncode:
        fail(f"git {' '.join(args[:2])} in {repo}: {out.stderr.decode().strip()[:300]}")
    return out.stdout.decode()


def travelling_files(repo: Path) -> list[str]:
    """What a device call sends besides carry: tracked files, untracked files git does not
    ignore, and a shared/ folder inside the checkout."""
    names = {n for n in git(repo, "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard").split("\0") if n}
    shared = repo / "shared"
    if shared.is_dir():
        names |= {str(p.relative_to(repo)) for p in shared.rglob("*") if p.is_file()}
    return sorted(names)


def tree_size(repo: Path) -> int:
    """Bytes of what a device call sends besides carry (see travelling_files)."""
    total = 0
    for name in travelling_files(repo):
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


# ---------------------------------------------------------------------------- the slim index


def study_keeps(repo: Path, study: Path) -> list[str]:
    """The folders under results/ that the GPU study reads on the device: its results_dir
    (finished members are not trained again), its members' teachers and its extra_runs."""
    try:
        spec = tomllib.loads(study.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        fail(f"{study}: cannot read the study file ({exc})")
    head, defaults = spec.get("study", {}), spec.get("defaults", {})
    paths = [head.get("results_dir", "results/study"), *head.get("extra_runs", [])]
    paths += [(defaults | m).get("teacher") for m in spec.get("members", [])]
    keeps = set()
    for p in filter(None, paths):
        full = (repo / p).resolve()
        try:
            keeps.add(str(full.relative_to(repo.resolve())))
        except ValueError:
            continue  # outside the repo: not in the index anyway
    return sorted(keeps)


def _under(name: str, folders: list[str]) -> bool:
    return any(name == f or name.startswith(f.rstrip("/") + "/") for f in folders)


def slim_plan(repo: Path, study: Path = DEFAULT_STUDY) -> tuple[list[str], list[str]]:
    """(tracked files under results/ that slimming untracks, the folders it keeps)."""
    keeps = study_keeps(repo, study)
    tracked = [n for n in git(repo, "ls-files", "-z", "--", RESULTS).split("\0") if n]
    return [n for n in tracked if not _under(n, keeps)], keeps


def slim_tree_size(repo: Path, study: Path = DEFAULT_STUDY) -> int:
    """What a call would send with the index slimmed (nothing is changed to measure it)."""
    drop = set(slim_plan(repo, study)[0])
    ignored = [n for n in travelling_files(repo) if n.startswith(RESULTS + "/")]
    tracked = set(git(repo, "ls-files", "-z", "--", RESULTS).split("\0"))
    dropped = drop | {n for n in ignored if n not in tracked}  # untracked results: ignored too
    return sum((repo / n).stat().st_size for n in travelling_files(repo)
               if n not in dropped and (repo / n).is_file() and not (repo / n).is_symlink())


def slim_state(carry: Path) -> dict | None:
    path = carry / SLIM_STATE
    return json.loads(path.read_text()) if path.is_file() else None


def slim(repo: Path, carry: Path, study: Path = DEFAULT_STUDY) -> dict:
    """Untrack (index only) the results the device does not need and ignore them meanwhile;
    returns the state that ``restore`` undoes. Idempotent."""
    state = slim_state(carry)
    if state:
        print(f"pack: the index is already slimmed ({len(state['paths'])} results files "
              "untracked); `pack.py --restore` puts them back")
        return state
    staged = git(repo, "diff", "--cached", "--name-only", "-z", "--", RESULTS).split("\0")
    if any(staged):
        fail(f"changes under {RESULTS}/ are staged ({[n for n in staged if n][:3]}); commit or "
             "unstage them before slimming the index")
    ignore = repo / RESULTS / ".gitignore"
    if ignore.exists():
        fail(f"{ignore} exists; slimming needs that name for its own ignore file")
    drop, keeps = slim_plan(repo, study)
    state = {"head": git(repo, "rev-parse", "HEAD").strip(), "paths": drop, "keeps": keeps,
             "ignore_file": str(ignore.relative_to(repo)), "created": time.time()}
    carry.mkdir(parents=True, exist_ok=True)
    (carry / SLIM_STATE).write_text(json.dumps(state, indent=1))  # first: restore can undo
    if drop:
        git(repo, "rm", "-r", "-q", "--cached", "--pathspec-from-file=-", "--pathspec-file-nul",
            stdin="\0".join(drop).encode())
    if (repo / RESULTS).is_dir():
        ignore.write_text(IGNORE_TEXT)
    print(f"pack: slimmed the index: {len(drop)} tracked files under {RESULTS}/ untracked and "
          f"ignored (kept: {', '.join(keeps) or 'none'}); nothing on disk changed.\n"
          "pack: DO NOT COMMIT until `python experiments/gpu/pack.py --restore` (or --import) "
          "has put the index back")
    return state


def restore(repo: Path, carry: Path) -> bool:
    """Undo ``slim``: the untracked paths back in the index from the commit they were slimmed
    at, the ignore file removed. Returns whether there was anything to restore."""
    state = slim_state(carry)
    if not state:
        return False
    if state["paths"]:
        git(repo, "reset", "-q", state["head"], "--pathspec-from-file=-", "--pathspec-file-nul",
            stdin="\0".join(state["paths"]).encode())
    ignore = repo / state["ignore_file"]
    if ignore.is_file() and ignore.read_text() == IGNORE_TEXT:
        ignore.unlink()
    missing = [n for n in state["paths"]
               if not git(repo, "ls-files", "--", n).strip()]
    if missing:
        fail(f"restore left {len(missing)} path(s) out of the index, e.g. {missing[0]}; "
             f"run `git reset {state['head']} -- {RESULTS}` by hand")
    (carry / SLIM_STATE).unlink()
    now = git(repo, "rev-parse", "HEAD").strip()
    note = "" if now == state["head"] else (f" (HEAD moved from {state['head'][:10]} to "
                                            f"{now[:10]} meanwhile: check `git status`)")
    print(f"pack: restored the index: {len(state['paths'])} results files tracked again{note}")
    return True


# ---------------------------------------------------------------------------- data and wheels


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
    from ferens.data.fer2013 import _read_bytes, load_fer2013

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


def part_files(coded: dict, labels: np.ndarray, codes: np.ndarray, parts: int,
               ferplus: Path | None, wheels: list[Path] | None) -> tuple[dict, list[int]]:
    """{part: {name: bytes or Path}} for ``parts`` parts, and the image index boundaries."""
    lengths = coded["lengths"].astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    files: dict[int, dict[str, bytes | Path]] = {k: {} for k in range(1, parts + 1)}
    for w in wheels or []:
        files[1][f"wheels/{w.name}"] = w
    files[parts]["meta.npz"] = npz_bytes({"labels": labels, "usage": codes}, compressed=True)
    if ferplus is not None and ferplus.is_file():
        files[parts]["fer2013new.csv.xz"] = lzma.compress(ferplus.read_bytes(),
                                                           preset=9 | lzma.PRESET_EXTREME)
    fixed = [sum(_size(v) for v in files[k].values()) for k in range(1, parts + 1)]
    bounds = split_points(lengths, fixed, parts)
    for k in range(1, parts + 1):
        lo, hi = bounds[k - 1], bounds[k]
        files[k][f"images-{k}.npz"] = npz_bytes({
            "format": coded["format"], "act_edges": coded["act_edges"], "freq": coded["freq"],
            "lengths": coded["lengths"][lo:hi], "data": coded["data"][starts[lo]:starts[hi]],
            "first_row": np.array(lo)})
    return files, bounds


def _size(v: bytes | Path) -> int:
    return v.stat().st_size if isinstance(v, Path) else len(v)


def calls_needed(tree: int, sizes: list[int], limit: int) -> bool:
    return all(s + tree <= limit for s in sizes)


def pack(data: Path, out: Path, parts: int | str = "auto", ferplus: Path | None = None,
         wheels: list[Path] | None = None, repo: Path = REPO, limit: int = CALL_LIMIT) -> dict:
    """Write ``out/part1..partN`` (N the fewest that fit with ``auto``); returns the sizes.
    Refuses (SystemExit 2) when a call with the tree and a part would exceed ``limit``."""
    check_ignored(repo, out)
    images, labels, codes, csv_sha = load_data(data)
    coded = kit.encode_images(images)
    tree = tree_size(repo)
    tried = range(1, MAX_PARTS + 1) if parts == "auto" else [int(parts)]
    for n in tried:
        files, bounds = part_files(coded, labels, codes, n, ferplus, wheels)
        sizes = {k: sum(_size(v) for v in files[k].values()) + MANIFEST_SLACK for k in files}
        if calls_needed(tree, list(sizes.values()), limit):
            break
    images_bytes = int(len(coded["data"]))
    wheel_bytes = sum(_size(v) for name, v in files[1].items() if name.startswith("wheels/"))
    report = {"tree": tree, "wheels": wheel_bytes, "parts": sizes, "limit": limit,
              "images": images_bytes, "raw_images": int(images.size), "calls": len(sizes)}
    for k, size in sizes.items():
        print(f"pack: part{k}: {size / MIB:.2f} MiB; with the tree ({tree / MIB:.2f} MiB) a call "
              f"sends {(size + tree) / MIB:.2f} of {limit / MIB:.0f} MiB")
    print(f"pack: images {images_bytes / MIB:.2f} MiB coded from {images.size / MIB:.2f} MiB "
          f"raw ({images_bytes / max(images.size, 1):.3f}); wheels {wheel_bytes / MIB:.2f} MiB")
    over = [k for k, size in sizes.items() if size + tree > limit]
    if over:
        hint = (f"try --parts {int(parts) + 1}" if parts != "auto" else
                f"even {MAX_PARTS} parts do not fit")
        fail(f"part{over[0]} ({sizes[over[0]] / MIB:.2f} MiB) plus the tree "
             f"({tree / MIB:.2f} MiB) exceeds the {limit / MIB:.0f} MiB a device call may send; "
             f"{hint}")
    manifest = {"format": kit.FORMAT, "parts": len(sizes), "rows": int(len(labels)),
                "bounds": bounds, "source": str(data), "csv_sha256": csv_sha,
                "tree_bytes": tree, **kit.array_hashes(images, labels, codes),
                "part_files": {str(k): {name: (kit.file_sha256(v) if isinstance(v, Path)
                                               else kit.sha256_bytes(v))
                                        for name, v in files[k].items()}
                               for k in files}}
    for k in files:
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
        if stale.name[4:].isdigit() and int(stale.name[4:]) > len(sizes):
            shutil.rmtree(stale)
    print(f"pack: {len(sizes)} device call(s) bring the data: "
          + ", ".join(f"call {k} carries .gpu-carry/part{k}" for k in sizes))
    return report


def status(repo: Path, carry: Path, limit: int = CALL_LIMIT, study: Path = DEFAULT_STUDY
           ) -> dict:
    """What a call sends now, and how many calls the packed parts need with this tree."""
    tree = tree_size(repo)
    state = slim_state(carry)
    if not state:
        print(f"pack: with the index slimmed a call would send "
              f"{slim_tree_size(repo, study) / MIB:.2f} MiB of tree")
    parts = sorted(carry.glob("part*/manifest.json"))
    sizes = [sum(p.stat().st_size for p in m.parent.rglob("*") if p.is_file()) for m in parts]
    print(f"pack: the index is {'SLIMMED (do not commit; --restore)' if state else 'as committed'};"
          f" a call sends {tree / MIB:.2f} MiB of tree")
    fits = calls_needed(tree, sizes, limit) if sizes else None
    if sizes:
        slimmed = slim_tree_size(repo, study) if not state else tree
        verdict = (f"{len(sizes)} call(s) fit" if fits else
                   "they fit once the index is slimmed (run pack.py)"
                   if calls_needed(slimmed, sizes, limit) else "they no longer fit; pack again")
        print(f"pack: {len(sizes)} packed part(s) of "
              + ", ".join(f"{s / MIB:.2f}" for s in sizes) + f" MiB: {verdict}")
    else:
        print("pack: no parts packed yet (run pack.py)")
    return {"tree": tree, "slim": bool(state), "parts": sizes, "fits": fits}


def archive_pieces(archive: Path) -> list[Path]:
    """The files that make up a results archive: itself, or, when session.sh split it (a file
    back from the device is at most 16 MiB), its pieces NAME.0, NAME.1, ... in order, given
    the first."""
    if not archive.name.endswith(".0"):
        return [archive]
    stem, pieces = archive.name[:-2], []
    while (archive.parent / f"{stem}.{len(pieces)}").is_file():
        pieces.append(archive.parent / f"{stem}.{len(pieces)}")
    if not pieces:
        fail(f"{archive}: no such file")
    later = [p.name for p in archive.parent.glob(f"{stem}.*")
             if p.name[len(stem) + 1:].isdigit() and p not in pieces]
    if later:
        fail(f"{archive}: pieces {sorted(later)} come after a missing one; are all back?")
    return pieces


def import_results(repo: Path, carry: Path, archive: Path) -> list[str]:
    """Restore the index if slimmed, then copy the results folders in a session's
    ferens-gpu-results.tar.gz (or its first piece, .0) into the repo; returns the folders
    copied."""
    restore(repo, carry)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tempfile.TemporaryFile() as joined:
                for piece in archive_pieces(archive):
                    with open(piece, "rb") as fh:
                        shutil.copyfileobj(fh, joined)
                joined.seek(0)
                with tarfile.open(fileobj=joined) as tar:
                    tar.extractall(tmp, filter="data")
        except (OSError, tarfile.TarError, EOFError) as exc:
            fail(f"{archive}: cannot read ({exc})")
        found = sorted(p for p in (Path(tmp) / RESULTS).glob("*") if p.is_dir())
        if not found:
            fail(f"{archive}: no {RESULTS}/<study> folder inside (did training start?)")
        for folder in found:
            dest = repo / RESULTS / folder.name
            shutil.copytree(folder, dest, dirs_exist_ok=True)
            print(f"pack: copied {folder.name} into {dest}")
        timing = Path(tmp) / "timing.md"
        if timing.is_file():
            print(timing.read_text())
    return [f.name for f in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--ferplus", type=Path, default=DEFAULT_FERPLUS,
                        help="FER+ votes file; skipped when missing")
    parser.add_argument("--out", type=Path, default=REPO / ".gpu-carry")
    parser.add_argument("--parts", default="auto", help="auto (the fewest that fit) or N")
    parser.add_argument("--wheels", action="store_true",
                        help="carry albumentations and imbalanced-learn (CPU recipes only)")
    parser.add_argument("--wheel-cache", type=Path, default=None,
                        help="[OUT/wheel-cache] where downloaded wheels are kept")
    parser.add_argument("--limit-mib", type=float, default=CALL_LIMIT / MIB)
    parser.add_argument("--study", type=Path, default=DEFAULT_STUDY,
                        help="the study whose results folders stay in the slimmed index")
    parser.add_argument("--no-slim", action="store_true", help="send the whole tree")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--status", action="store_true", help="sizes and calls; packs nothing")
    group.add_argument("--restore", action="store_true", help="put the slimmed index back")
    group.add_argument("--import", dest="archive", type=Path,
                       help="restore, then copy a session's results archive into results/")
    args = parser.parse_args()
    limit = int(args.limit_mib * MIB)
    if args.status:
        status(REPO, args.out, limit, args.study)
        return
    if args.restore:
        if not restore(REPO, args.out):
            print("pack: the index is not slimmed; nothing to restore")
        return
    if args.archive:
        import_results(REPO, args.out, args.archive)
        return
    if args.parts != "auto" and (not args.parts.isdigit() or int(args.parts) < 1):
        fail("--parts must be auto or a whole number >= 1")
    check_ignored(REPO, args.out)
    slimmed_here = not args.no_slim and not slim_state(args.out)
    if not args.no_slim:
        slim(REPO, args.out, args.study)
    try:
        wheels = (fetch_wheels(args.wheel_cache or args.out / "wheel-cache") if args.wheels
                  else None)
        pack(args.data, args.out, args.parts, args.ferplus, wheels, REPO, limit)
    except BaseException:
        if slimmed_here:  # no session without parts: never leave the index slimmed for nothing
            restore(REPO, args.out)
        raise


if __name__ == "__main__":
    main()
