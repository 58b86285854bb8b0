"""FER2013 for a lent GPU machine: a lossless image codec, the carry parts, and their unpacking.

Runs on both sides with the standard library and numpy alone (Python 3.11 here, 3.12 there):

    python3 experiments/gpu/kit.py ensure .gpu-carry /tmp/ferens-gpu /tmp/ferens-gpu/fer2013.csv
    python3 experiments/gpu/kit.py unpack .gpu-carry/part1 /tmp/ferens-gpu   # one part
    python3 experiments/gpu/kit.py rebuild /tmp/ferens-gpu /tmp/ferens-gpu/fer2013.csv
    python3 experiments/gpu/kit.py env [--need-cuda]        # versions; exit 2 if training can't
    python3 experiments/gpu/kit.py derive-study experiments/study_gpu.toml OUT.toml \
        --set device=cpu --set epochs=1 [--results-dir D] [--out-dir D]

``ensure`` unpacks every carried part and rebuilds and verifies the CSV, or does nothing when
this (warm) machine already holds the verified data of the same images.

``experiments/gpu/pack.py`` writes the parts. The codec is a static-model rANS coder (one
32-bit stream per image, all images coded side by side with numpy): each pixel is predicted
with the LOCO-I median predictor and its residual coded under one of 96 contexts (local
activity x vertical gradient) with frequency tables fitted on the data and stored with it.
On FER2013 it takes about 5.0 bits a pixel, against 6.2 for xz -9e and 5.7 for WebP lossless.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import lzma
import shutil
import sys
import tomllib
from pathlib import Path

import numpy as np

SIDE = 48
PIXELS = SIDE * SIDE
FORMAT = 1
USAGES = ("Training", "PublicTest", "PrivateTest")
HEADER = b"emotion,pixels,Usage"
# rANS: 32-bit state in [L, 256 L), 16-bit probabilities, bytewise renormalisation
PROB_BITS = 16
PROB_SCALE = 1 << PROB_BITS
RANS_L = 1 << 23
GRAD_EDGES = np.array([-21, -7, -3, 0, 3, 7, 21])  # d - b (up-right minus up): 8 levels
N_ACTIVITY = 12  # activity |a-c| + |b-c| + |d-b| in 12 levels (edges fitted, stored)
MANIFEST = "manifest.json"
VERIFIED = "verified.json"


class KitError(Exception):
    """A problem with the carry parts: printed as one line, exit code 2."""


# ---------------------------------------------------------------------------- the codec


def _neighbours(img: np.ndarray, y: int, x: int) -> tuple[np.ndarray, ...]:
    """(left, up, up-left, up-right) of pixel (y, x) in every image, from causal pixels only:
    off the image, up falls back to left and left to up (0 at the first pixel)."""
    if y == 0:
        a = img[:, 0, x - 1] if x else np.zeros(len(img), np.int64)
        return a, a, a, a
    b = img[:, y - 1, x]
    a = img[:, y, x - 1] if x else b
    c = img[:, y - 1, x - 1] if x else b
    d = img[:, y - 1, x + 1] if x < SIDE - 1 else b
    return a, b, c, d


def _predict(img: np.ndarray, y: int, x: int, act_edges: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """(median prediction, context index) of pixel (y, x) in every image."""
    a, b, c, d = _neighbours(img, y, x)
    hi, lo = np.maximum(a, b), np.minimum(a, b)
    pred = np.where(c >= hi, lo, np.where(c <= lo, hi, a + b - c))
    act = np.abs(a - c) + np.abs(b - c) + np.abs(d - b)
    ctx = (np.searchsorted(act_edges, act, side="right") * (len(GRAD_EDGES) + 1)
           + np.searchsorted(GRAD_EDGES, d - b, side="right"))
    return pred, ctx


def _activity_edges(images: np.ndarray) -> np.ndarray:
    """Quantile edges of the activity over interior pixels (only parameters: any value works)."""
    a, c = images[:, 1:, :-2].astype(np.int64), images[:, :-1, :-2].astype(np.int64)
    b, d = images[:, :-1, 1:-1].astype(np.int64), images[:, :-1, 2:].astype(np.int64)
    act = (np.abs(a - c) + np.abs(b - c) + np.abs(d - b))[:, ::3, ::3].ravel()
    edges = np.quantile(act, np.linspace(0, 1, N_ACTIVITY + 1)[1:-1]) if act.size else []
    return np.unique(np.asarray(edges, dtype=np.int64))


def _frequencies(counts: np.ndarray) -> np.ndarray:
    """Counts (contexts, 256) -> frequencies summing to PROB_SCALE per context, each >= 1."""
    total = counts.sum(axis=1, keepdims=True)
    freq = 1 + (counts * (PROB_SCALE - 256)) // np.maximum(total, 1)
    rows = np.arange(len(freq))
    freq[rows, freq.argmax(axis=1)] += PROB_SCALE - freq.sum(axis=1)
    return freq.astype(np.int64)


def encode_images(images: np.ndarray) -> dict[str, np.ndarray]:
    """Code (N, 48, 48) uint8 images losslessly; returns arrays for ``np.savez``."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    n = len(images)
    act_edges = _activity_edges(images) if n else np.zeros(0, np.int64)
    img = images.astype(np.int32)
    symbols = np.empty((PIXELS, n), np.uint8)
    contexts = np.empty((PIXELS, n), np.uint8)
    n_ctx = (len(act_edges) + 1) * (len(GRAD_EDGES) + 1)
    counts = np.zeros(n_ctx * 256, np.int64)
    for p in range(PIXELS):
        y, x = divmod(p, SIDE)
        pred, ctx = _predict(img, y, x, act_edges)
        symbols[p] = (img[:, y, x] - pred) & 255
        contexts[p] = ctx
        counts += np.bincount(ctx * 256 + symbols[p], minlength=n_ctx * 256)
    freq = _frequencies(counts.reshape(n_ctx, 256))
    cum = np.concatenate([np.zeros((n_ctx, 1), np.int64), np.cumsum(freq, axis=1)[:, :-1]], 1)
    out = np.zeros((n, 2 * PIXELS + 8), np.uint8)  # bytes in emission order, per image
    ptr = np.zeros(n, np.int64)
    rows = np.arange(n)
    state = np.full(n, RANS_L, np.int64)
    for p in range(PIXELS - 1, -1, -1):  # rANS codes last-in first-out
        f, c = freq[contexts[p], symbols[p]], cum[contexts[p], symbols[p]]
        limit = f << (23 - PROB_BITS + 8)
        for _ in range(2):
            m = state >= limit
            out[rows[m], ptr[m]] = state[m] & 255
            ptr[m] += 1
            state[m] >>= 8
        state = ((state // f) << PROB_BITS) + state % f + c
    for _ in range(4):
        out[rows, ptr] = state & 255
        ptr += 1
        state >>= 8
    # each image's bytes reversed, so the decoder reads forward
    data = b"".join(out[i, :ptr[i]][::-1].tobytes() for i in range(n))
    return {"format": np.array(FORMAT), "act_edges": act_edges,
            "freq": freq.astype(np.uint32), "lengths": ptr.astype(np.uint16),
            "data": np.frombuffer(data, np.uint8)}


def decode_images(coded: dict[str, np.ndarray]) -> np.ndarray:
    """The inverse of ``encode_images``: (N, 48, 48) uint8."""
    if int(coded["format"]) != FORMAT:
        raise KitError(f"image chunk format {int(coded['format'])}, this kit reads {FORMAT}")
    act_edges = coded["act_edges"].astype(np.int64)
    freq = coded["freq"].astype(np.int64)
    lengths = coded["lengths"].astype(np.int64)
    n = len(lengths)
    cum = np.concatenate([np.zeros((len(freq), 1), np.int64), np.cumsum(freq, axis=1)], 1)
    slot_symbol = np.empty((len(freq), PROB_SCALE), np.uint8)
    for k in range(len(freq)):
        slot_symbol[k] = np.repeat(np.arange(256), freq[k])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    data = np.concatenate([coded["data"].astype(np.int64), np.zeros(4, np.int64)])
    ptr = starts.copy()
    state = np.zeros(n, np.int64)
    for _ in range(4):
        state = (state << 8) | data[ptr]
        ptr += 1
    img = np.zeros((n, SIDE, SIDE), np.int32)
    for p in range(PIXELS):
        y, x = divmod(p, SIDE)
        pred, ctx = _predict(img, y, x, act_edges)
        slot = state & (PROB_SCALE - 1)
        sym = slot_symbol[ctx, slot].astype(np.int64)
        state = freq[ctx, sym] * (state >> PROB_BITS) + slot - cum[ctx, sym]
        for _ in range(2):
            m = state < RANS_L
            state[m] = (state[m] << 8) | data[ptr[m]]
            ptr[m] += 1
        img[:, y, x] = (pred + sym) & 255
    if n and (not np.array_equal(ptr, starts + lengths) or np.any(state != RANS_L)):
        raise KitError("image chunk is damaged: the decoder did not end where the coder began")
    return img.astype(np.uint8)


# ---------------------------------------------------------------------------- data and hashes


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def array_hashes(images: np.ndarray, labels: np.ndarray, usage: np.ndarray) -> dict[str, str]:
    """SHA-256 of the images (uint8, C order), labels (uint8) and usage codes (uint8, index in
    USAGES): what pack records and what the rebuilt data must reproduce."""
    codes = usage_codes(usage)
    return {"images_sha256": sha256_bytes(np.ascontiguousarray(images, np.uint8).tobytes()),
            "labels_sha256": sha256_bytes(np.asarray(labels).astype(np.uint8).tobytes()),
            "usage_sha256": sha256_bytes(codes.tobytes())}


def usage_codes(usage: np.ndarray) -> np.ndarray:
    usage = np.asarray(usage)
    if usage.dtype.kind in "iu":
        return usage.astype(np.uint8)
    codes = np.full(len(usage), 255, np.uint8)
    for i, name in enumerate(USAGES):
        codes[usage == name] = i
    if (codes == 255).any():
        raise KitError(f"unknown Usage value(s) {sorted(set(usage[codes == 255]))[:3]}")
    return codes


def csv_text(images: np.ndarray, labels: np.ndarray, codes: np.ndarray) -> bytes:
    """The original ``emotion,pixels,Usage`` text with ``\\n`` line ends."""
    names = [str(i) for i in range(256)]
    lines = [HEADER.decode()]
    flat = images.reshape(len(images), PIXELS).tolist()
    for row, label, code in zip(flat, labels.tolist(), codes.tolist(), strict=True):
        lines.append(f"{label},{' '.join([names[v] for v in row])},{USAGES[code]}")
    return ("\n".join(lines) + "\n").encode()


# ---------------------------------------------------------------------------- unpacking


def read_manifest(part: Path) -> dict:
    path = part / MANIFEST
    if not path.is_file():
        raise KitError(f"{path}: missing; is {part} a part written by experiments/gpu/pack.py?")
    return json.loads(path.read_text())


def unpack(part: Path, dest: Path) -> dict:
    """Check a part's files against its manifest and unpack them into ``dest``: decoded images
    (images-K.npy), meta.npz, fer2013new.csv; wheels stay in the part for pip."""
    manifest = read_manifest(part)
    dest.mkdir(parents=True, exist_ok=True)
    entry = manifest["part_files"][str(manifest["part"])]
    for name, digest in entry.items():
        if not (part / name).is_file():
            raise KitError(f"{part / name}: missing from part {manifest['part']}")
        if file_sha256(part / name) != digest:
            raise KitError(f"{part / name}: sha256 differs from the manifest (damaged copy)")
    for name in entry:
        src = part / name
        if name.startswith("images-"):
            with np.load(src, allow_pickle=False) as z:
                images = decode_images(dict(z))
            out = dest / (Path(name).stem + ".npy")
            np.save(out.with_suffix(".tmp.npy"), images)
            out.with_suffix(".tmp.npy").replace(out)
        elif name.endswith(".xz"):
            (dest / Path(name).stem).write_bytes(lzma.decompress(src.read_bytes()))
        elif not name.startswith("wheels/"):
            shutil.copy2(src, dest / name)
    (dest / f"manifest-{manifest['part']}.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def load_unpacked(dest: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """(manifest, images, labels, usage codes) from every unpacked part in ``dest``."""
    found = sorted(dest.glob("manifest-*.json"))
    if not found:
        raise KitError(f"{dest}: no unpacked part (run `kit.py unpack PART {dest}` first)")
    manifest = json.loads(found[0].read_text())
    chunks = []
    for k in range(1, manifest["parts"] + 1):
        path = dest / f"images-{k}.npy"
        if not path.is_file():
            raise KitError(f"{path}: part {k} of {manifest['parts']} is not unpacked here (the "
                           "machine was not kept warm between the calls?): run its stage again")
        chunks.append(np.load(path))
    with np.load(dest / "meta.npz", allow_pickle=False) as z:
        labels, codes = z["labels"], z["usage"]
    return manifest, np.concatenate(chunks), labels, codes


def check_hashes(expected: dict, images: np.ndarray, labels: np.ndarray, usage: np.ndarray,
                 what: str) -> None:
    got = array_hashes(images, labels, usage)
    bad = [k for k in got if got[k] != expected[k]]
    if bad:
        raise KitError(f"{what}: {', '.join(bad)} differ from what pack.py recorded")


def rebuild(dest: Path, out_csv: Path, check_ferens: bool = True) -> dict:
    """Write the FER2013 CSV from the unpacked parts and check it, arrays and text, against the
    hashes pack.py recorded; with ``check_ferens`` also load it with ferens.load_fer2013."""
    manifest, images, labels, codes = load_unpacked(dest)
    check_hashes(manifest, images, labels, codes, "decoded arrays")
    text = csv_text(images, labels, codes)
    if manifest.get("csv_sha256") and sha256_bytes(text) != manifest["csv_sha256"]:
        raise KitError(f"{out_csv}: the rebuilt CSV text differs from the packed CSV's")
    tmp = out_csv.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(text, 1) if out_csv.suffix == ".gz" else text)
    tmp.replace(out_csv)
    report = {"rows": len(labels), "csv": str(out_csv), "csv_sha256": sha256_bytes(text),
              **{k: manifest[k] for k in ("images_sha256", "labels_sha256", "usage_sha256")}}
    if check_ferens:
        from ferens.data.fer2013 import load_fer2013

        ds = load_fer2013(out_csv)
        check_hashes(manifest, ds.images, ds.labels, ds.usage, f"{out_csv} read by ferens")
        if not np.array_equal(ds.row_ids, np.arange(len(labels))):
            raise KitError(f"{out_csv}: ferens row ids are not 0..N-1")
        report["ferens_verified"] = True
    (dest / VERIFIED).write_text(json.dumps(report, indent=1))
    return report


def ensure(carry: Path, dest: Path, out_csv: Path, check_ferens: bool = True,
           require_all: bool = True) -> dict:
    """Unpack every part carried in ``carry`` and rebuild + verify the CSV once all parts are
    there; nothing when ``dest`` already holds verified data of the same images (a warm
    machine). Returns {"state": "verified" | "already" | "partial", ...}."""
    manifests = sorted(carry.glob("part*/" + MANIFEST))
    carried = [json.loads(m.read_text()) for m in manifests]
    verified = dest / VERIFIED
    if verified.is_file() and out_csv.is_file():
        done = json.loads(verified.read_text())
        same = all(m["images_sha256"] == done["images_sha256"] for m in carried)
        if same and done.get("csv") == str(out_csv) and (
                not carried or file_sha256(out_csv) == done["csv_sha256"]):
            return {"state": "already", **done}
    if not carried:
        raise KitError(f"{carry}: no part carried and no verified data in {dest} (a fresh "
                       "machine): name .gpu-carry/part1 (and the others) in the call's carry")
    for part in manifests:
        unpack(part.parent, dest)
    total = carried[0]["parts"]
    have = sorted({int(p.stem.split("-")[1]) for p in dest.glob("images-*.npy")})
    if have != list(range(1, total + 1)):
        if require_all:
            raise KitError(f"{dest}: parts {have} of {total} unpacked; every part must be "
                           "carried in this call or unpacked by earlier calls on this machine")
        return {"state": "partial", "parts": have, "of": total}
    return {"state": "verified", **rebuild(dest, out_csv, check_ferens)}


def check_env(need_cuda: bool) -> int:
    """Print the interpreter, libraries and device; 2 when training cannot run here."""
    import importlib
    import importlib.metadata as md
    import platform

    problems = []
    print("python", sys.version.split()[0], platform.machine())
    for name in ("torch", "timm", "numpy", "scikit-learn", "scipy", "pandas", "safetensors",
                 "typer", "opencv-python-headless", "albumentations", "imbalanced-learn",
                 "onnx", "onnxruntime", "pytest"):
        try:
            print(name, md.version(name))
        except md.PackageNotFoundError:
            print(name, "MISSING")
    try:
        import torch

        cuda = torch.cuda.is_available()
        print("cuda", cuda, torch.version.cuda,
              torch.cuda.get_device_name(0) if cuda else "", flush=True)
        if need_cuda and not cuda:
            problems.append("torch sees no CUDA device")
    except Exception as exc:  # what matters is that it is said, whatever it is
        problems.append(f"import torch: {type(exc).__name__}: {exc}")
    for module in ("ferens.train.member", "ferens.study.pipeline", "ferens.cli",
                   "ferens.data.torch_augment"):
        try:
            importlib.import_module(module)
        except Exception as exc:
            problems.append(f"import {module}: {type(exc).__name__}: {exc}")
    for module, needed_by in (("albumentations", "the albumentations recipes (light, strong)"),
                              ("imblearn", "imbalance=oversample")):
        try:
            importlib.import_module(module)
        except Exception as exc:
            print(f"optional: {module} unusable ({type(exc).__name__}); only {needed_by} "
                  "need it")
    for problem in problems:
        print(f"env: error: {problem}", file=sys.stderr)
    print("env: ok" if not problems else f"env: {len(problems)} problem(s)", flush=True)
    return 2 if problems else 0


# ---------------------------------------------------------------------------- study overrides


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise KitError(f"cannot write {value!r} to TOML")


def parse_set(items: list[str]) -> dict:
    """``key=value`` pairs; values read as TOML (numbers, booleans), else as strings."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise KitError(f"--set {item!r}: expected key=value")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out


def derive_study(study: Path, out: Path, overrides: dict, results_dir: str | None = None,
                 out_dir: str | None = None, replace: dict | None = None) -> Path:
    """A copy of a study file with ``overrides`` set in [defaults] and every member, and
    ``replace`` set only where [defaults] or a member sets that key (a trial's teacher, say),
    so a trial run cannot be mistaken for, or resume into, the real one: give it its own
    folders."""
    replace = replace or {}
    spec = tomllib.loads(study.read_text())
    head = dict(spec.get("study", {}))
    if results_dir:
        head["results_dir"] = results_dir
    defaults = dict(spec.get("defaults", {}))
    defaults = defaults | overrides | {k: v for k, v in replace.items() if k in defaults}
    if out_dir:
        defaults["out_dir"] = out_dir
    lines = [f"# derived from {study} by experiments/gpu/kit.py with {overrides}", "[study]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in head.items()]
    lines += ["", "[defaults]"] + [f"{k} = {_toml_value(v)}" for k, v in defaults.items()]
    for member in spec.get("members", []):
        lines += ["", "[[members]]"]
        member = member | overrides | {k: v for k, v in replace.items() if k in member}
        lines += [f"{k} = {_toml_value(v)}" for k, v in member.items()]
    for table in spec.get("ensembles", []):
        lines += ["", "[[ensembles]]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    if "ray" in spec:
        lines += ["", "[ray]"] + [f"{k} = {_toml_value(v)}" for k, v in spec["ray"].items()]
    out.write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("unpack", help="check and unpack one part")
    p.add_argument("part", type=Path)
    p.add_argument("dest", type=Path)
    p = sub.add_parser("ensure", help="unpack the carried parts, rebuild and verify (once)")
    p.add_argument("carry", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("csv", type=Path)
    p.add_argument("--no-ferens", action="store_true")
    p.add_argument("--partial-ok", action="store_true",
                   help="unpack without rebuilding when parts are still to come")
    p = sub.add_parser("env", help="versions and imports; exit 2 when training cannot run")
    p.add_argument("--need-cuda", action="store_true")
    p = sub.add_parser("rebuild", help="write and verify the FER2013 CSV")
    p.add_argument("dest", type=Path)
    p.add_argument("csv", type=Path)
    p.add_argument("--no-ferens", action="store_true", help="skip the ferens.load_fer2013 check")
    p = sub.add_parser("derive-study", help="a study file with fields overridden")
    p.add_argument("study", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--set", dest="sets", action="append", default=[])
    p.add_argument("--replace", dest="replaces", action="append", default=[],
                   help="key=value set only where the study sets key")
    p.add_argument("--results-dir")
    p.add_argument("--out-dir")
    args = parser.parse_args(argv)
    if args.cmd == "env":
        return check_env(args.need_cuda)
    try:
        if args.cmd == "ensure":
            report = ensure(args.carry, args.dest, args.csv, check_ferens=not args.no_ferens,
                            require_all=not args.partial_ok)
            print(f"kit: data {report['state']}: " + json.dumps(report))
        elif args.cmd == "unpack":
            m = unpack(args.part, args.dest)
            print(f"kit: unpacked part {m['part']} of {m['parts']} into {args.dest}")
        elif args.cmd == "rebuild":
            print("kit: rebuilt and verified " + json.dumps(
                rebuild(args.dest, args.csv, check_ferens=not args.no_ferens)))
        else:
            derive_study(args.study, args.out, parse_set(args.sets), args.results_dir,
                         args.out_dir, parse_set(args.replaces))
            print(f"kit: wrote {args.out}")
    except (KitError, OSError, ValueError, KeyError) as exc:
        print(f"kit: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
