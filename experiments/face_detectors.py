"""Face detectors for `ferens predict`: fit each one's crop rule, then benchmark them on photos.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python experiments/face_detectors.py fit
    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python experiments/face_detectors.py bench

Both paste real FER2013 faces (48x48, upscaled) into 640x480 canvases at known places, over
crops of scikit-image's photos (coffee, a cat, a rocket, bricks, coins, ...: things that are not
faces), so the true frame of every face is known; a face counts as found when the square that
the detector's crop rule cuts overlaps the true frame with IoU >= 0.5, and every other box is a
false positive.

- ``fit`` (PublicTest faces, held out from the benchmark): for each detector the crop rule that
  reproduces FER2013's frame from its boxes (medians of the true side over sqrt(w*h) and of the
  centre offsets), then the shipped model's accuracy on the found faces cropped with the old
  rule (max(w, h) + 1.5% margin per side), with the fitted rule and at the true frames; and
  MTCNN's found / false positives for a few --confidence and --min-face values.
- ``bench`` (PrivateTest faces): five variants (plain; rotated by 8-15 degrees either way; a
  lighting gradient saved as JPEG quality 40; small faces of 40-64 px; colour faces on colour
  photos) plus scikit-image's astronaut, through `predict_images` with each detector's
  defaults and the shipped model's defaults: faces found, false positives, accuracy over all
  faces (right answers / faces pasted), accuracy on the faces found, and CPU ms per image
  (detection alone, and the whole `predict_images` call), one thread.

Writes a markdown section to --out (printed too); results/bench.md keeps it.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FERENS_DATA", ROOT.parent / "shared/data/fer2013/fer2013.csv.gz"))
W, H = 640, 480
BACKGROUNDS = ("coffee", "chelsea", "rocket", "brick", "grass", "gravel", "coins", "moon",
               "page", "hubble_deep_field", "immunohistochemistry", "clock", "text", "cell")
COLOUR_BACKGROUNDS = ("coffee", "chelsea", "rocket", "hubble_deep_field",
                      "immunohistochemistry")
# Skin tones (B, G, R gains) for the colour variant.
TINTS = ((0.72, 0.82, 1.0), (0.62, 0.74, 0.95), (0.5, 0.62, 0.82), (0.42, 0.52, 0.7))
VARIANTS = ("plain", "rotated", "lighting+jpeg40", "small", "colour")
ASTRONAUT_FACE = (172, 62, 100, 106)  # hand-labelled, as in tests/test_predict.py


@dataclass
class Face:
    x: int
    y: int
    side: int
    label: int
    face: np.ndarray  # the 48x48 original

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.side, self.side)


@dataclass
class Canvas:
    name: str
    image: np.ndarray  # BGR, as saved
    faces: list[Face]
    suffix: str = ".png"
    quality: int | None = None


def _backgrounds(colour: bool) -> list[np.ndarray]:
    from skimage import data

    out = []
    for name in COLOUR_BACKGROUNDS if colour else BACKGROUNDS:
        im = getattr(data, name)()
        if im.ndim == 2:
            im = cv2.cvtColor(im, cv2.COLOR_GRAY2RGB)
        im = cv2.cvtColor(im[..., :3], cv2.COLOR_RGB2BGR)
        out.append(im if colour else cv2.cvtColor(cv2.cvtColor(im, cv2.COLOR_BGR2GRAY),
                                                   cv2.COLOR_GRAY2BGR))
    return out


def _background(pool: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    im = pool[rng.integers(len(pool))]
    h, w = im.shape[:2]
    zoom = rng.uniform(0.6, 1.0)
    ch, cw = int(h * zoom), int(min(w, h * zoom * W / H))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return cv2.resize(im[y:y + ch, x:x + cw], (W, H), interpolation=cv2.INTER_LINEAR)


def _paste(canvas: np.ndarray, patch: np.ndarray, x: int, y: int, angle: float = 0.0) -> None:
    """Paste a square BGR patch with its top-left at (x, y), rotated about its centre."""
    side = patch.shape[0]
    if not angle:
        canvas[y:y + side, x:x + side] = patch
        return
    pad = int(math.ceil(side * 0.21)) + 1
    big = cv2.copyMakeBorder(patch, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    mask = np.zeros(big.shape[:2], np.float32)
    mask[pad:pad + side, pad:pad + side] = 1
    centre = (big.shape[1] / 2 - 0.5, big.shape[0] / 2 - 0.5)
    m = cv2.getRotationMatrix2D(centre, angle, 1.0)
    big = cv2.warpAffine(big, m, big.shape[1::-1], flags=cv2.INTER_CUBIC)
    mask = cv2.warpAffine(mask, m, mask.shape[1::-1], flags=cv2.INTER_LINEAR)[..., None]
    region = canvas[y - pad:y + side + pad, x - pad:x + side + pad]
    region[:] = (mask * big + (1 - mask) * region).round().astype(np.uint8)


def make_canvases(images: np.ndarray, labels: np.ndarray, variant: str, n_faces: int,
                  seed: int) -> list[Canvas]:
    """Canvases holding ``n_faces`` faces (taken in order) of one variant."""
    rng = np.random.default_rng(seed)
    colour = variant == "colour"
    pool = _backgrounds(colour)
    small = variant == "small"
    cols, rows = (4, 2) if small else (2, 2)
    per = cols * rows
    out, k = [], 0
    while k < n_faces:
        canvas = _background(pool, rng)
        canvas = (canvas.astype(np.float32) * rng.uniform(0.7, 1.0)).astype(np.uint8)
        faces = []
        cw, ch = W // cols, H // rows
        for cell in range(per):
            if k >= n_faces:
                break
            if small:
                side = int(rng.integers(40, 65))
            elif variant == "rotated":
                side = int(rng.integers(72, 161))
            else:
                side = int(rng.integers(72, 201))
            angle = (float(rng.choice([-1, 1]) * rng.uniform(8, 15)) if variant == "rotated"
                     else 0.0)
            pad = int(math.ceil(side * 0.21)) + 1 if angle else 4
            cx, cy = (cell % cols) * cw, (cell // cols) * ch
            x = int(rng.integers(cx + pad, cx + cw - side - pad + 1))
            y = int(rng.integers(cy + pad, cy + ch - side - pad + 1))
            face = images[k]
            patch = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
            patch = cv2.cvtColor(patch, cv2.COLOR_GRAY2BGR)
            if colour:
                tint = np.array(TINTS[rng.integers(len(TINTS))], np.float32)
                patch = np.clip(patch * tint * rng.uniform(0.9, 1.15), 0, 255).astype(np.uint8)
            _paste(canvas, patch, x, y, angle)
            faces.append(Face(x, y, side, int(labels[k]), face))
            k += 1
        if variant.startswith("lighting"):
            t = np.linspace(0, 1, W)[None, :] if rng.random() < 0.5 else np.linspace(
                0, 1, H)[:, None]
            t = t if rng.random() < 0.5 else 1 - t
            low, high = rng.uniform(0.25, 0.5), rng.uniform(1.1, 1.4)
            gain = (low + (high - low) * np.broadcast_to(t, (H, W)))[..., None]
            canvas = np.clip(canvas * gain, 0, 255).astype(np.uint8)
        name = f"{variant.split('+')[0]}-{len(out):03d}"
        if variant.startswith("lighting"):
            ok, raw = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 40])
            out.append(Canvas(name, cv2.imdecode(raw, cv2.IMREAD_COLOR), faces, ".jpg", 40))
        else:
            out.append(Canvas(name, canvas, faces))
    return out


def astronaut_canvas() -> Canvas:
    from skimage import data

    image = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    x, y, w, h = ASTRONAUT_FACE
    side = int(round(math.sqrt(w * h)))
    face = Face(int(round(x + w / 2 - side / 2)), int(round(y + h / 2 - side / 2)), side, -1,
                np.zeros((48, 48), np.uint8))
    return Canvas("astronaut", image, [face])


def write_canvases(canvases: list[Canvas], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for c in canvases:
        path = folder / f"{c.name}{c.suffix}"
        params = [cv2.IMWRITE_JPEG_QUALITY, c.quality] if c.quality else []
        cv2.imwrite(str(path), c.image, params)
        paths.append(path)
    return paths


def iou(a, b) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union else 0.0


def match(truth: list[tuple], found: list[tuple], min_iou: float = 0.5) -> tuple[dict, int]:
    """Greedy one-to-one matching by IoU: {truth index: found index}, false positives."""
    pairs = sorted(((iou(t, f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found)),
                   reverse=True)
    got, used = {}, set()
    for score, i, j in pairs:
        if score < min_iou:
            break
        if i not in got and j not in used:
            got[i] = j
            used.add(j)
    return got, len(found) - len(used)


def rule_square(rule, box) -> tuple:
    left, top, side = rule.square(box)
    return (left, top, side, side)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def load_loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _setup():
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from ferens.data.fer2013 import load_fer2013
    from ferens.deploy.shipped import load_model

    return load_fer2013(DATA), load_model().bundle


def _detectors(names=None) -> list[str]:
    from ferens.deploy.face_cascades import haar_available
    from ferens.deploy.face_mtcnn import mtcnn_available

    have = ["haar"] if haar_available() else []
    have += ["lbp"] + (["mtcnn"] if mtcnn_available() else [])
    return [d for d in have if names is None or d in names]


# --- fit -------------------------------------------------------------------------------------

def fit(ns) -> list[str]:
    from ferens.deploy.face_crops import CROP_RULES, CropRule, crop_face
    from ferens.deploy.faces import face_detector

    ds, bundle = _setup()
    val = ds.split("val")
    n = ns.faces
    canvases = []
    for v, variant in enumerate(("plain", "lighting+jpeg40", "colour")):
        part = slice(v * n, (v + 1) * n)
        canvases += make_canvases(val.images[part], val.labels[part], variant, n, seed=100 + v)
    faces = [f for c in canvases for f in c.faces]
    lines = [f"### Crop rules, fitted on {len(faces)} PublicTest faces",
             "",
             f"Command: `OMP_NUM_THREADS=1 python experiments/face_detectors.py fit --faces {n}` "
             f"({len(canvases)} canvases: {n} faces each plain, lighting gradient + JPEG q40 and "
             "colour, 72-200 px). Accuracy: the shipped model with its own TTA on the faces each "
             "detector found (IoU >= 0.3 between its box and the true frame).",
             "",
             "| detector | faces found | box h/w | true side / sqrt(w*h) | centre dx, dy (of w, h) "
             "| accuracy, old rule max(w,h)x1.03 | accuracy, fitted rule | accuracy, true frames |",
             "|---|---|---|---|---|---|---|---|"]
    old = CropRule(1.03, side="max")
    for name in _detectors(ns.detectors):
        finder = face_detector(name)
        scale, dxs, dys, ratio, labels, found = [], [], [], [], [], []
        crops_old, crops_true = [], []
        for c in canvases:
            gray = cv2.cvtColor(c.image, cv2.COLOR_BGR2GRAY)
            boxes = finder.detect(c.image)
            got, _ = match([f.box for f in c.faces], boxes, 0.3)
            for i, j in got.items():
                f, (x, y, w, h) = c.faces[i], boxes[j]
                scale.append(f.side / math.sqrt(w * h))
                dxs.append((f.x + f.side / 2 - (x + w / 2)) / w)
                dys.append((f.y + f.side / 2 - (y + h / 2)) / h)
                ratio.append(h / w)
                found.append((gray, boxes[j]))
                crops_old.append(crop_face(gray, boxes[j], old))
                crops_true.append(crop_face(gray, f.box, CropRule(1.0)))
                labels.append(f.label)
        rule = CropRule(round(float(np.median(scale)), 3), round(float(np.median(dxs)), 3),
                        round(float(np.median(dys)), 3))
        crops_fit = [crop_face(g, b, rule) for g, b in found]
        labels = np.array(labels)

        def acc(crops, labels=labels):
            return float((bundle.predict_proba(np.stack(crops), "torch", 256).argmax(1)
                          == labels).mean())
        shipped = CROP_RULES[name]
        lines.append(f"| {name} | {len(labels)}/{len(faces)} | {np.median(ratio):.2f} | "
                     f"{rule.scale:.3f} (IQR {np.percentile(scale, 25):.3f}-"
                     f"{np.percentile(scale, 75):.3f}) | {rule.dx:+.3f}, {rule.dy:+.3f} | "
                     f"{100 * acc(crops_old):.1f}% | {100 * acc(crops_fit):.1f}% | "
                     f"{100 * acc(crops_true):.1f}% |")
        print(lines[-1], f"(ferens.deploy.face_crops has {shipped})", flush=True)
    if "mtcnn" in _detectors(ns.detectors):
        lines += mtcnn_sweep(val, n)
    return lines


def mtcnn_sweep(val, n: int) -> list[str]:
    """MTCNN's found / false positives / CPU on all five variants (other PublicTest faces) by
    --min-face, the first two stages' thresholds and --confidence."""
    from ferens.deploy.face_crops import CROP_RULES
    from ferens.deploy.face_mtcnn import Mtcnn

    start = 3 * n  # after the faces the rules were fitted on
    canvases = []
    for v, variant in enumerate(VARIANTS):
        part = slice(start + v * n, start + (v + 1) * n)
        canvases += make_canvases(val.images[part], val.labels[part], variant, n, seed=300 + v)
    total = sum(len(c.faces) for c in canvases)
    lines = ["", f"MTCNN settings on {total} other PublicTest faces, {n} in each of the five "
             "benchmark variants (found: the crop overlaps the true frame, IoU >= 0.5; boxes "
             "smaller than --min-face dropped, as `FaceDetector.detect` does; CPU ms per "
             "640x480 canvas, one thread):", "",
             "| --min-face | stage 1, 2 thresholds | --confidence | found | false positives | "
             "CPU ms per image |", "|---|---|---|---|---|---|"]
    rule = CROP_RULES["mtcnn"]
    for min_face in (20, 24, 32):
        for stages in ((0.6, 0.7), (0.5, 0.6)):
            net = Mtcnn(min_face, thresholds=(*stages, 0.5))
            dets, cpu = [], 0.0
            for c in canvases:
                rgb = cv2.cvtColor(c.image, cv2.COLOR_BGR2RGB)
                t = time.process_time()
                dets.append(net.detect(rgb))
                cpu += time.process_time() - t
            for conf in (0.7, 0.8, 0.9):
                hits = fps = 0
                for c, d in zip(canvases, dets, strict=True):
                    boxes = [(max(0, int(a)), max(0, int(b)), int(x2) - max(0, int(a)),
                              int(y2) - max(0, int(b))) for a, b, x2, y2, s in d[:, :5]
                             if s > conf]
                    boxes = [b for b in boxes if b[2] * b[3] >= min_face ** 2]  # as detect()
                    got, fp = match([f.box for f in c.faces],
                                    [rule_square(rule, b) for b in boxes])
                    hits, fps = hits + len(got), fps + fp
                lines.append(f"| {min_face} | {stages[0]}, {stages[1]} | {conf} | "
                             f"{hits}/{total} ({100 * hits / total:.1f}%) | {fps} | "
                             f"{1000 * cpu / len(canvases):.0f} |")
                print(lines[-1], flush=True)
    return lines


# --- bench -----------------------------------------------------------------------------------

@dataclass
class Tally:
    faces: int = 0
    found: int = 0
    false_pos: int = 0
    right: int = 0
    images: int = 0
    detect_cpu: float = 0.0
    total_cpu: float = 0.0
    per_variant: dict = field(default_factory=dict)


def timed(finder):
    """A copy of a FaceDetector whose search adds its CPU seconds to ``.cpu``."""
    clock = {"cpu": 0.0}
    real = finder.find

    def find(image):
        t = time.process_time()
        try:
            return real(image)
        finally:
            clock["cpu"] += time.process_time() - t
    return replace(finder, find=find), clock


def bench(ns) -> list[str]:
    from ferens.classes import CLASS_NAMES
    from ferens.deploy.face_crops import CropRule
    from ferens.deploy.faces import default_detector, face_detector
    from ferens.deploy.predict import predict_images

    ds, bundle = _setup()
    test = ds.split("test")
    n = ns.faces
    sets = {}
    for v, variant in enumerate(VARIANTS):
        part = slice(v * n, (v + 1) * n)
        sets[variant] = make_canvases(test.images[part], test.labels[part], variant, n,
                                      seed=200 + v)
    sets["astronaut"] = [astronaut_canvas()]
    index = {name: i for i, name in enumerate(CLASS_NAMES)}
    runs = [(name, face_detector(name)) for name in _detectors(ns.detectors)]
    if any(name == "mtcnn" for name, _ in runs):
        runs.append(("mtcnn, old crop rule max(w,h)x1.03",
                     face_detector("mtcnn", rule=CropRule(1.03, side="max"))))
    tallies = {}
    oracle = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {v: write_canvases(c, Path(tmp) / v) for v, c in sets.items()}
        for variant, canvases in sets.items():  # the model on crops at the true frames
            if variant == "astronaut":
                continue
            faces = [f for c in canvases for f in c.faces]
            crops = []
            for c in canvases:
                gray = cv2.cvtColor(cv2.imread(str(Path(tmp) / variant / f"{c.name}{c.suffix}")),
                                    cv2.COLOR_BGR2GRAY)
                crops += [bundle_crop(gray, f.box) for f in c.faces]
            pred = bundle.predict_proba(np.stack(crops), "torch", 256).argmax(1)
            oracle[variant] = (int((pred == [f.label for f in faces]).sum()), len(faces))
        for label, finder in runs:
            tally = Tally()
            for variant, canvases in sets.items():
                clocked, clock = timed(finder)
                t = time.process_time()
                frame = predict_images(bundle, paths[variant], detector=clocked, batch_size=256)
                total = time.process_time() - t
                part = Tally(images=len(canvases), detect_cpu=clock["cpu"], total_cpu=total)
                for c, path in zip(canvases, paths[variant], strict=True):
                    rows = frame[frame["file"] == str(path)]
                    boxes = [tuple(map(int, r)) for r in
                             rows[["x", "y", "w", "h"]].itertuples(index=False)]
                    got, fp = match([f.box for f in c.faces],
                                    [rule_square(finder.rule, b) for b in boxes])
                    part.faces += len(c.faces)
                    part.found += len(got)
                    part.false_pos += fp
                    tops = rows["top_class"].tolist()
                    part.right += sum(index[tops[j]] == c.faces[i].label for i, j in got.items())
                tally.per_variant[variant] = part
                if variant != "astronaut":
                    for key in ("faces", "found", "false_pos", "right", "images"):
                        setattr(tally, key, getattr(tally, key) + getattr(part, key))
                    tally.detect_cpu += part.detect_cpu
                    tally.total_cpu += part.total_cpu
            tallies[label] = tally
            print(label, tally.found, tally.faces, tally.false_pos, tally.right,
                  f"{1000 * tally.detect_cpu / tally.images:.0f} ms", flush=True)
    seconds = time.perf_counter() - start
    n_faces = sum(o[1] for o in oracle.values())
    default = default_detector()
    lines = [f"### Photo benchmark: {n_faces:,} PrivateTest faces in "
             f"{sum(len(c) for v, c in sets.items() if v != 'astronaut')} photos, and the "
             "astronaut",
             "",
             f"Command: `OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python "
             f"experiments/face_detectors.py bench --faces {n}` ({seconds / 60:.1f} min). "
             f"CPU: {cpu_model()}, {os.cpu_count()} cores, one thread (torch and OpenCV); "
             f"load average {load_loadavg()} at the end: **the box was loaded** (two training "
             "lanes on both cores), so CPU times (process time, not wall time) are above a "
             "quiet core's; ratios within the table hold. Each detector with its defaults, the "
             "shipped model with its own TTA, through `predict_images` on the saved files. "
             f"`auto` is **{default}** on this installation.",
             "",
             "| detector | faces found | false positives | accuracy over all faces | accuracy "
             "on found faces | CPU ms per image, detection | CPU ms per image, whole predict "
             "| astronaut: found, false positives |",
             "|---|---|---|---|---|---|---|---|"]
    for label, t in tallies.items():
        a = t.per_variant["astronaut"]
        mark = " (default)" if label == default else ""
        lines.append(f"| {label}{mark} | {t.found}/{t.faces} ({100 * t.found / t.faces:.1f}%) | "
                     f"{t.false_pos} | **{100 * t.right / t.faces:.1f}%** | "
                     f"{100 * t.right / max(1, t.found):.1f}% | "
                     f"{1000 * t.detect_cpu / t.images:.0f} | "
                     f"{1000 * t.total_cpu / t.images:.0f} | {a.found}/1, {a.false_pos} |")
    right = sum(o[0] for o in oracle.values())
    lines.append(f"| (crops at the true frames, no detector) | - | - | {100 * right / n_faces:.1f}%"
                 " | - | - | - | - |")
    lines += ["", "Per variant: faces found / accuracy over all faces (false positives):", "",
              "| detector | " + " | ".join(v for v in VARIANTS) + " |",
              "|---|" + "---|" * len(VARIANTS)]
    for label, t in tallies.items():
        cells = [f"{p.found}/{p.faces} / {100 * p.right / p.faces:.1f}% ({p.false_pos})"
                 for v, p in t.per_variant.items() if v != "astronaut"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| true frames | " + " | ".join(
        f"{100 * oracle[v][0] / oracle[v][1]:.1f}%" for v in VARIANTS) + " |")
    return lines


def bundle_crop(gray: np.ndarray, box: tuple) -> np.ndarray:
    from ferens.deploy.face_crops import CropRule, crop_face

    return crop_face(gray, box, CropRule(1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("fit", "bench"))
    parser.add_argument("--faces", type=int, default=None,
                        help="faces per variant [fit 120, bench 240]")
    parser.add_argument("--detectors", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the markdown here too")
    ns = parser.parse_args()
    ns.faces = ns.faces or (120 if ns.mode == "fit" else 240)
    lines = fit(ns) if ns.mode == "fit" else bench(ns)
    text = "\n".join(lines) + "\n"
    print(text)
    if ns.out:
        ns.out.write_text(text)


if __name__ == "__main__":
    main()
