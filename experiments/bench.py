"""ferens benchmark: speed ratios measured side by side in one run, written to results/bench.md.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python experiments/bench.py [--quick] [--out results/bench.md]

Rows: training-loop efficiency (bare loop vs train_one_epoch), threads vs side-by-side lanes,
channels_last, data parsing (cold/warm), inference with and without flip TTA, bundle prediction
(PyTorch vs ONNX Runtime, batched vs one image per call), `ferens predict --no-detect` on the
3,589 test crops as PNG files, ensemble + report wall time for 10 members, and peak RSS.
Medians over repeats with the spread (min-max).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from ferens.data.fer2013 import FerDataset

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FERENS_DATA", ROOT.parent / "shared/data/fer2013/fer2013.csv.gz"))
PREDICT_CONFIG = ROOT / "experiments/ablation/none.toml"
TRAINED_MEMBER = ROOT / "runs/ablation-none"
FER_PACKAGE_RATE = "about 1,900"


def median_spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def bare_loop_rate(model_name: str, width: float, batch: int, steps: int, threads: int,
                   channels_last: bool = True) -> float:
    """Images/s of forward+loss+backward+step on tensors already in memory."""
    import torch

    from ferens.models.factory import create_member_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_member_model(model_name, width=width)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, 48, 48).contiguous(memory_format=fmt)
    y = torch.randint(0, 7, (batch,))
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def _bench_config(model_name: str, width: float, batch: int, threads: int, engine: int = 2,
                  workers: int = 0, augment: str = "light"):
    from ferens.config import TrainConfig

    return TrainConfig(model=model_name, width=width, batch_size=batch, augment=augment,
                       threads=threads, epochs=1, engine=engine, workers=workers)


def ferens_epoch_rate(model_name: str, width: float, batch: int, steps: int, threads: int,
                      engine: int = 2, workers: int = 0, augment: str = "light") -> float:
    """Images/s of ferens' train_one_epoch (loading, augmentation, sampling, loss, metrics)
    on real data; ``engine`` 1 is the v1 loop, 2 the per-sample-seeded loader."""
    import torch

    from ferens.data.fer2013 import load_fer2013
    from ferens.data.loader import make_loader
    from ferens.train.loop import build_parts, train_one_epoch

    torch.set_num_threads(threads)
    cfg = _bench_config(model_name, width, batch, threads, engine, workers, augment)
    train = load_fer2013(DATA).split("train")
    cpu = torch.device("cpu")
    parts = build_parts(cfg, train.subset(np.arange((steps + 3) * batch)), cpu)
    warm = train.subset(np.arange(3 * batch))
    train_one_epoch(parts, make_loader(warm.images, warm.labels, cfg, cpu), cfg, 1, False)
    rest = train.subset(np.arange(3 * batch, (steps + 3) * batch))
    loader = make_loader(rest.images, rest.labels, cfg, cpu)
    return train_one_epoch(parts, loader, cfg, 2, False)["images_per_second"]


def loader_rate(batch: int, steps: int, workers: int, augment: str = "strong") -> float:
    """Images/s of the engine-2 training loader alone (no model): is a machine data-bound?"""
    import torch

    from ferens.data.fer2013 import load_fer2013
    from ferens.data.loader import TrainLoader

    cfg = _bench_config("resnet18", 0.5, batch, 1, 2, workers, augment)
    train = load_fer2013(DATA).split("train")
    part = train.subset(np.arange((steps + 3) * batch))
    loader = TrainLoader(part.images, part.labels, cfg, torch.device("cpu"))
    for _ in loader.epoch(1):  # start the workers, warm the caches
        pass
    start, seen = time.perf_counter(), 0
    for images, _ in loader.epoch(2):
        seen += len(images)
    return seen / (time.perf_counter() - start)


def child(args: list[str]) -> dict:
    """Run a throughput measurement in a fresh process (own thread pool and RSS)."""
    env = os.environ | {"OMP_NUM_THREADS": args[args.index("--threads") + 1]}
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                         text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_child(ns: argparse.Namespace) -> None:
    if ns.kind == "report":
        rows: list = []
        bench_ensemble_report(rows)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(("6. peak RSS of the ensemble + report process (MB)", f"{rss:.0f}",
                     "all five ensembles and the report of 10 members, one process"))
        print(json.dumps({"rows": rows}))
        return
    if ns.kind == "recipe":
        print(json.dumps(recipe_rate(ns)))
        return
    if ns.kind == "same":
        print(json.dumps(recipe_logits(ns)))
        return
    if ns.kind == "bare":
        rate = bare_loop_rate(ns.model, ns.width, ns.batch, ns.steps, ns.threads,
                              channels_last=not ns.contiguous)
    elif ns.kind == "loader":
        rate = loader_rate(ns.batch, ns.steps, ns.workers, ns.augment)
    else:
        rate = ferens_epoch_rate(ns.model, ns.width, ns.batch, ns.steps, ns.threads,
                                 ns.engine, ns.workers, ns.augment)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rate": rate, "rss_mb": rss}))


def side_by_side(args: list[str], lanes: int) -> float:
    """Total images/s of ``lanes`` single-thread children started together."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, "--child", *args, "--threads", "1"],
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(lanes)]
    return sum(json.loads(p.communicate()[0].strip().splitlines()[-1])["rate"] for p in procs)


def bench_training(repeats: int, steps: int, rows: list) -> None:
    common = ["--model", "resnet18", "--width", "0.5", "--batch", "64", "--steps", str(steps)]
    bare = [child(["--kind", "bare", *common, "--threads", "1"])["rate"] for _ in range(repeats)]
    ours = [child(["--kind", "ferens", *common, "--threads", "1"]) for _ in range(repeats)]
    rates = [o["rate"] for o in ours]
    rows.append(("1. bare loop, resnet18 w0.5, batch 64, 1 thread (img/s)", median_spread(bare),
                 ""))
    rows.append(("1. ferens train_one_epoch, same (img/s)", median_spread(rates),
                 f"ratio {statistics.median(rates) / statistics.median(bare):.2f} "
                 "(target >= 0.90)"))
    contiguous = [child(["--kind", "bare", *common, "--threads", "1", "--contiguous"])["rate"]
                  for _ in range(repeats)]
    rows.append(("2. bare loop without channels_last (img/s)", median_spread(contiguous),
                 "channels_last gain "
                 f"x{statistics.median(bare) / statistics.median(contiguous):.2f}"))
    two = [child(["--kind", "bare", *common, "--threads", "2"])["rate"] for _ in range(repeats)]
    pair = [side_by_side(["--kind", "bare", *common], 2) for _ in range(repeats)]
    rows.append(("2. one member on 2 threads (img/s)", median_spread(two), ""))
    rows.append(("2. two members side by side, 1 thread each (total img/s)", median_spread(pair),
                 f"x{statistics.median(pair) / statistics.median(two):.2f} vs 2 threads"))
    rows.append(("6. peak RSS of a training process (MB)",
                 f"{max(o['rss_mb'] for o in ours):.0f}", "ferens train_one_epoch child"))


def bench_engine(repeats: int, steps: int, rows: list) -> None:
    """The v1 loop against the engine-2 loop (same member, strong augmentation, one thread),
    repeats interleaved so drift hits both alike; then the loader alone by worker count and
    the model's own step rate."""
    common = ["--model", "resnet18", "--width", "0.5", "--batch", "64", "--steps", str(steps),
              "--augment", "strong", "--threads", "1"]
    old, new, new2 = [], [], []
    for _ in range(repeats):
        old.append(child(["--kind", "ferens", *common, "--engine", "1"])["rate"])
        new.append(child(["--kind", "ferens", *common, "--engine", "2"])["rate"])
        new2.append(child(["--kind", "ferens", *common, "--engine", "2", "--workers", "2"])["rate"])
    ratio = statistics.median(new) / statistics.median(old)
    rows.append(("8. v1 loop (engine 1), resnet18 w0.5, strong aug, 1 thread (img/s)",
                 median_spread(old), ""))
    rows.append(("8. engine 2, --workers 0, same (img/s)", median_spread(new),
                 f"ratio {ratio:.3f} vs v1 (target >= 0.97)"))
    rows.append(("8. engine 2, --workers 2, same (img/s)", median_spread(new2),
                 f"ratio {statistics.median(new2) / statistics.median(old):.3f} vs v1"))
    for workers in (0, 1, 2):
        rates = [child(["--kind", "loader", *common, "--workers", str(workers)])["rate"]
                 for _ in range(repeats)]
        rows.append((f"8. loader alone, strong aug, --workers {workers} (img/s)",
                     median_spread(rates), "uint8 batches of 64, no model"))
    bare = [child(["--kind", "bare", *common])["rate"] for _ in range(repeats)]
    rows.append(("8. model step alone (forward+backward+AdamW), 1 thread (img/s)",
                 median_spread(bare), "tensors already in memory"))


def bench_data(repeats: int, rows: list) -> None:
    from ferens.data.fer2013 import load_fer2013

    saved = os.environ.get("FERENS_CACHE")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["FERENS_CACHE"] = cache
        cold, warm = [], []
        for _ in range(repeats):
            for f in Path(cache).glob("*"):
                f.unlink()
            t = time.perf_counter()
            load_fer2013(DATA)
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            load_fer2013(DATA)
            warm.append(time.perf_counter() - t)
    if saved is None:
        os.environ.pop("FERENS_CACHE")
    else:
        os.environ["FERENS_CACHE"] = saved
    rows.append(("3. cold parse of fer2013.csv.gz (s)", median_spread(cold), "target < 15 s"))
    rows.append(("3. warm (cached) load (s)", f"{statistics.median(warm):.2f}", "target < 1 s"))


def bench_inference(repeats: int, rows: list) -> None:
    import torch

    from ferens.config import TrainConfig
    from ferens.data.fer2013 import load_fer2013
    from ferens.models.factory import create_member_model
    from ferens.models.inference import predict_logits

    torch.set_num_threads(os.cpu_count() or 1)
    test = load_fer2013(DATA).split("test")
    model = create_member_model("resnet18", width=0.5).eval()
    for tta in ("none", "flip"):
        for cl in (True, False):
            m = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            cfg = TrainConfig(tta=tta, channels_last=cl)
            rates = []
            for _ in range(repeats):
                t = time.perf_counter()
                predict_logits(m, test.images, cfg, torch.device("cpu"))
                rates.append(len(test) / (time.perf_counter() - t))
            rows.append((f"4. test prediction, tta={tta}, channels_last={cl}, "
                         f"{torch.get_num_threads()} threads (img/s)", median_spread(rates), ""))


def fresh_member(folder: Path, test: FerDataset) -> Path:
    """A member folder with untrained weights and the ablation-none config (speed is the same)."""
    import torch
    from safetensors.torch import save_file

    from ferens.config import TrainConfig
    from ferens.io import write_json
    from ferens.models.factory import create_member_model
    from ferens.runs import Predictions, save_predictions

    values = tomllib.loads(PREDICT_CONFIG.read_text())["member"]
    cfg = TrainConfig.from_dict(values | {"out_dir": str(folder)}, source=str(PREDICT_CONFIG))
    torch.manual_seed(cfg.seed)
    model = create_member_model(cfg.model, cfg.stem, cfg.width, None, cfg.drop_rate)
    cfg.run_dir.mkdir(parents=True)
    cfg.save(cfg.run_dir / "config.json")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(cfg.run_dir / "best.safetensors"))
    write_json(cfg.run_dir / "summary.json", {"name": cfg.name, "kind": "member"})
    save_predictions(cfg.run_dir / "predictions" / "test.npz",
                     Predictions(np.zeros((len(test), 7), np.float32), test.labels, test.row_ids))
    return cfg.run_dir


def bench_member(folder: Path, test: FerDataset) -> tuple[Path, str]:
    """runs/ablation-none when finished (read only), else a fresh member; and which one it is."""
    if (TRAINED_MEMBER / "summary.json").is_file():
        return TRAINED_MEMBER, "runs/ablation-none weights"
    config = PREDICT_CONFIG.relative_to(ROOT)
    return fresh_member(folder, test), f"untrained weights, config of {config}"


def cli_predict(bundle: Path, crops: Path, out: Path, backend: str, threads: int) -> dict:
    """Wall time of one `ferens predict --no-detect` process and its own prediction time."""
    cmd = [sys.executable, "-c", "from ferens.cli import main; main()", "predict", str(bundle),
           str(crops), "--no-detect", "--out", str(out), "--backend", backend,
           "--threads", str(threads)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t
    summary = json.loads((out / "predictions.json").read_text())["summary"]
    return {"wall": wall, "predict": summary["seconds"], "faces": summary["faces"]}


def bench_predict(repeats: int, rows: list) -> None:
    """Bundle prediction on the 3,589 test crops, in memory (4.) and through the CLI (7.)."""
    import torch

    from ferens.data.fer2013 import load_fer2013
    from ferens.deploy.bundle import load_bundle
    from ferens.deploy.export import export_bundle
    from ferens.deploy.predict import measure_throughput
    from ferens.deploy.writers import save_face_crops

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    test = load_fer2013(DATA).split("test")
    with tempfile.TemporaryDirectory() as tmp:
        member, weights = bench_member(Path(tmp) / "runs", test)
        path = export_bundle(member, Path(tmp) / "bench.ferens", onnx=True)
        bundle = load_bundle(path, torch.device("cpu"))
        cfg = bundle.members[0].config
        params = sum(p.numel() for p in bundle.members[0].model.parameters())
        what = (f"{cfg.model} w{cfg.width:g}, {params / 1e6:.2f}M params, tta={cfg.tta}; "
                f"{weights}")
        for backend in ("torch", "onnx"):
            for per_image in (False, True):
                rates = [measure_throughput(bundle, test.images, 256, backend,
                                            per_image)["images_per_second"]
                         for _ in range(repeats)]
                call = "one image per call" if per_image else "batch 256"
                rows.append((f"4. bundle predict_proba on {len(test):,} test crops, {backend}, "
                             f"{call}, {threads} threads (img/s)", median_spread(rates), what))
        crops = Path(tmp) / "crops"
        save_face_crops(test.images, crops)
        for backend in ("torch", "onnx"):
            runs = [cli_predict(path, crops, Path(tmp) / f"pred-{backend}", backend, threads)
                    for _ in range(repeats)]
            if any(r["faces"] != len(test) for r in runs):
                raise RuntimeError(f"ferens predict returned {runs[0]['faces']} rows, "
                                   f"not {len(test)}")
            rows.append((f"7. ferens predict --no-detect, {len(test):,} PNG crops, --backend "
                         f"{backend}: predict_images (img/s)",
                         median_spread([len(test) / r["predict"] for r in runs]),
                         "reading the PNGs + batched prediction (batch 256)"))
            walls = [r["wall"] for r in runs]
            rows.append((f"7. same, whole CLI process wall time (s), --backend {backend}",
                         median_spread(walls),
                         f"{len(test) / statistics.median(walls):.0f} img/s including Python, "
                         "imports, bundle load, CSV/JSON"))
    rows.append(("7. fer package's model, one image per call (img/s)", FER_PACKAGE_RATE,
                 "earlier measurement on this machine, not re-measured here: quantised "
                 "58k-parameter net"))


def _with_onnx(bundle_dir: Path, folder: Path) -> Path:
    """A copy of a bundle with an ONNX file added to each member (checksums updated)."""
    import shutil

    import torch

    from ferens.data.fer2013 import file_sha256
    from ferens.deploy.bundle import load_bundle
    from ferens.deploy.export import export_onnx
    from ferens.io import read_json, write_json

    copy = Path(shutil.copytree(bundle_dir, folder / "onnx.ferens"))
    manifest = read_json(copy / "manifest.json")
    loaded = load_bundle(copy, torch.device("cpu"))
    for i, (entry, member) in enumerate(zip(manifest["members"], loaded.members, strict=True)):
        path = export_onnx(member.model, member.config, copy / "members" / str(i) / "model.onnx")
        entry["files"]["model.onnx"] = file_sha256(path)
    manifest["onnx"] = True
    write_json(copy / "manifest.json", manifest)
    return copy


def faces_canvas(faces: np.ndarray, side: int = 120) -> np.ndarray:
    """A 640x480 BGR photo with four FER2013 faces upscaled to ``side`` px on a gray wall."""
    import cv2

    canvas = np.full((480, 640), 110, np.uint8)
    for face, (x, y) in zip(faces[:4], [(40, 40), (360, 40), (40, 300), (360, 300)],
                            strict=True):
        canvas[y:y + side, x:x + side] = cv2.resize(face, (side, side),
                                                    interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)


def bench_default_model(repeats: int, rows: list) -> None:
    """The shipped model on one core: aligned crops (PyTorch, ONNX Runtime), 640x480 photos
    with four faces (detection included, two --min-face settings), and a generated video."""
    import cv2
    import torch

    from ferens.data.fer2013 import load_fer2013
    from ferens.deploy.bundle import load_bundle
    from ferens.deploy.face_cascades import haar_available
    from ferens.deploy.faces import default_detector
    from ferens.deploy.predict import measure_throughput, predict_images
    from ferens.deploy.shipped import default_model_path
    from ferens.models.inference import tta_views

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    test = load_fer2013(DATA).split("test")
    bundle = load_bundle(default_model_path(), torch.device("cpu"))
    name = bundle.manifest["name"]
    cfg = bundle.members[0].config
    own = cfg.tta
    # the model's own TTA, then --tta flip (two views) unless that is its own
    ttas = list(dict.fromkeys([own, "flip"]))
    views = {t: len(tta_views(test.images[:1], cfg, t)) for t in ttas}
    with tempfile.TemporaryDirectory() as tmp:
        onnx = load_bundle(_with_onnx(default_model_path(), Path(tmp)), torch.device("cpu"))
        for tta in ttas:
            for backend, b in (("torch", bundle), ("onnx", onnx)):
                b = b.with_tta(tta)
                rates = [measure_throughput(b, test.images, 256, backend)["images_per_second"]
                         for _ in range(repeats)]
                rows.append((f"9. shipped model ({name}), {len(test):,} aligned test crops "
                             f"(--no-detect), --tta {tta}{' (its own)' if tta == own else ''}, "
                             f"{backend}, 1 thread (img/s)", median_spread(rates),
                             f"fp16 weights widened to fp32; {views[tta]} views per face"))
        photos = Path(tmp) / "photos"
        photos.mkdir()
        for i in range(20):
            cv2.imwrite(str(photos / f"p{i:02d}.png"), faces_canvas(test.images[4 * i:]))
        default = default_detector()
        settings = [(default, None, own), ("haar", 48, own), ("haar", 24, own)]
        settings += [(default, None, t) for t in ttas if t != own]
        for detector, min_face, tta in settings:
            if detector == "haar" and not haar_available():
                continue
            runs = []
            for _ in range(repeats):
                frame = predict_images(bundle.with_tta(tta), [photos], detector=detector,
                                       min_face=min_face, batch_size=64)
                runs.append((20 / frame.attrs["summary"]["seconds"], len(frame),
                             frame.attrs["summary"]["min_face"]))
            mark = " (the default)" if detector == default else ""
            rows.append((f"9. 640x480 photos with 4 faces, detection + prediction, --detector "
                         f"{detector}{mark} --min-face {runs[0][2]}, --tta {tta}, 1 thread "
                         "(photos/s)", median_spread([r[0] for r in runs]),
                         f"{runs[0][1]} of 80 faces found; fer package: about 12 photos/s on "
                         "the same kind of canvas (earlier measurement, not re-run here)"))
        video = Path(tmp) / "clip.avi"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (640, 480))
        for i in range(250):  # 10 s at 25 fps, the faces change every 25 frames
            writer.write(faces_canvas(test.images[4 * (i // 25):]))
        writer.release()
        for label, options in (("every frame", {"every": 1}),
                               ("every frame, --detect-every 5", {"every": 1,
                                                                  "detect_every": 5}),
                               ("--fps 5 (default)", {})):
            rates = []
            for _ in range(repeats):
                frame = predict_images(bundle, [video], batch_size=64, **options)
                sampled = frame.attrs["videos"][str(video)]["frames_sampled"]
                rates.append(sampled / frame.attrs["summary"]["seconds"])
            rows.append((f"9. 10 s 640x480 video with 4 faces, {label}, --detector "
                         f"{default}, 1 thread "
                         "(sampled frames/s)", median_spread(rates),
                         f"{250 / (sampled / statistics.median(rates)):.0f} video frames/s "
                         "of input"))


def bench_ensemble_report(rows: list) -> None:
    from ferens.combine.ensemble import build_ensemble
    from ferens.data.fer2013 import load_fer2013
    from ferens.io import write_json
    from ferens.report.build import write_report
    from ferens.runs import Predictions, save_predictions

    ds = load_fer2013(DATA)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        members = []
        for i in range(10):
            run = Path(tmp) / f"m{i}"
            for split in ("val", "test"):
                part = ds.split(split)
                logits = rng.normal(size=(len(part), 7)) * 2
                logits[np.arange(len(part)), part.labels] += rng.uniform(0.5, 2.5)
                save_predictions(run / "predictions" / f"{split}.npz",
                                 Predictions(logits, part.labels, part.row_ids))
            write_json(run / "config.json", {"name": f"m{i}"})
            members.append(run)
        total = 0.0
        for method in ("mean", "logit-mean", "weighted", "greedy", "stack"):
            t = time.perf_counter()
            build_ensemble(members, method=method, out=Path(tmp) / f"ens-{method}")
            took = time.perf_counter() - t
            total += took
            rows.append((f"5. ferens ensemble --method {method}, 10 members (s)", f"{took:.1f}",
                         ""))
        t = time.perf_counter()
        write_report(members, out=Path(tmp) / "report")
        took = time.perf_counter() - t
        rows.append(("5. ferens report, 10 members, no --data (s)", f"{took:.1f}",
                     f"ensembles + report {total + took:.1f} s (target < 30 s)"))


# --- Study v3: throughput of the v2 final recipe, and what each v3 member costs -------------
ALLOCATORS = {  # Debian's packages libjemalloc2 and libtcmalloc-minimal4
    "system": None,
    "jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
}


def recipe_config(ns: argparse.Namespace):
    """The v2 final recipe (experiments/study_v2.toml crop44-e90) with the variant's changes;
    the learning rate is held per image (lr x batch / 64)."""
    from ferens.config import TrainConfig

    return TrainConfig(model=ns.model, width=ns.width, stem=ns.stem, input_size=ns.input_size,
                       crop_size=ns.crop, augment="strong", tta="tencrop", select_tta="flip",
                       epochs=90, batch_size=ns.batch, lr=0.002 * ns.batch / 64, threads=1,
                       compile=ns.compile)


def _recipe_parts(ns: argparse.Namespace, rows: int):
    import torch

    from ferens.data.fer2013 import load_fer2013
    from ferens.train.loop import build_parts

    torch.set_num_threads(1)
    cfg = recipe_config(ns)
    train = load_fer2013(DATA).split("train").subset(np.arange(rows))
    parts = build_parts(cfg, train, torch.device("cpu"))
    if ns.fused:  # the same AdamW update in one fused kernel per parameter group
        groups = [{k: v for k, v in g.items() if k not in ("initial_lr", "lr")}
                  for g in parts.optimizer.param_groups]
        parts.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
        parts.scheduler.optimizer = parts.optimizer
    return cfg, train, parts


def recipe_rate(ns: argparse.Namespace) -> dict:
    """Training images per second of train_one_epoch (wall clock and per CPU-second of this
    process, which other load on the machine changes less) after a warm-up epoch."""
    import torch

    from ferens.data.loader import TrainLoader
    from ferens.train.loop import train_one_epoch

    warm_rows = 5 * ns.batch
    cfg, train, parts = _recipe_parts(ns, warm_rows + ns.steps * ns.batch)
    cpu = torch.device("cpu")
    warm = train.subset(np.arange(warm_rows))
    train_one_epoch(parts, TrainLoader(warm.images, warm.labels, cfg, cpu), cfg, 1, False)
    rest = train.subset(np.arange(warm_rows, len(train)))
    t, c = time.perf_counter(), time.process_time()
    train_one_epoch(parts, TrainLoader(rest.images, rest.labels, cfg, cpu), cfg, 2, False)
    wall, cpu_s = time.perf_counter() - t, time.process_time() - c
    return {"rate": len(rest) / wall, "cpu_rate": len(rest) / cpu_s}


def recipe_logits(ns: argparse.Namespace) -> dict:
    """Two epochs of the variant on the first Training rows, then val logits with flip: what
    'the same numbers' is judged on (saved to ns.save)."""
    import torch

    from ferens.data.fer2013 import load_fer2013
    from ferens.data.loader import TrainLoader
    from ferens.models.inference import predict_logits
    from ferens.train.loop import train_one_epoch

    cfg, train, parts = _recipe_parts(ns, ns.steps * 64)
    cpu = torch.device("cpu")
    loader = TrainLoader(train.images, train.labels, cfg, cpu)
    for epoch in (1, 2):
        train_one_epoch(parts, loader, cfg, epoch, False)
    val = load_fer2013(DATA).split("val")
    logits = predict_logits(parts.model, val.images, cfg, cpu, tta="flip")
    np.save(ns.save, logits)
    return {"saved": ns.save}


def _variant_args(variant: dict) -> list[str]:
    args = []
    for key in ("model", "width", "stem", "input_size", "crop", "batch"):
        if key in variant:
            args += [f"--{key.replace('_', '-')}", str(variant[key])]
    args += ["--compile"] if variant.get("compile") else []
    args += ["--fused"] if variant.get("fused") else []
    return args


def _variant_child(kind: str, variant: dict, steps: int, extra: list[str] = ()) -> dict:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    lib = ALLOCATORS[variant.get("allocator", "system")]
    if lib:
        env["LD_PRELOAD"] = lib
    out = subprocess.run([sys.executable, __file__, "--child", "--kind", kind, "--threads", "1",
                          "--steps", str(steps), *_variant_args(variant), *extra],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


THROUGHPUT_VARIANTS = [  # (row label, variant); the first is the yardstick
    ("v2 final recipe as trained (system malloc, batch 64)", {}),
    ("tcmalloc (LD_PRELOAD)", {"allocator": "tcmalloc"}),
    ("jemalloc (LD_PRELOAD)", {"allocator": "jemalloc"}),
    ("fused AdamW", {"fused": True}),
    ("torch.compile of the model", {"compile": True}),
    ("batch 128, lr x2 (held per image)", {"batch": 128}),
    ("tcmalloc + fused AdamW", {"allocator": "tcmalloc", "fused": True}),
]
MEMBER_VARIANTS = [  # study v3's members (experiments/study_v3.toml)
    ("resnet18 w0.5, 44 px crops (v2 final recipe)", {}),
    ("resnet34 w0.5 (v3-r34)", {"model": "resnet34"}),
    ("resnet18 w0.5, 44 px faces, 40 px crops (v3-in44c40)", {"input_size": 44, "crop": 40}),
    ("resnet50 w0.5 (v3-r50)", {"model": "resnet50"}),
    ("resnet18 w0.5, stride-2 stem (v3-r18s2)", {"stem": "s2"}),
    ("resnet18 w1.0 (v3-r18w1)", {"width": 1.0}),
]


def bench_throughput(repeats: int, steps: int, rows: list) -> None:
    """Each variant of the v2 final recipe in its own process, repeats interleaved so drift
    hits all alike; then whether it gives the same numbers: val logits after two epochs on
    the first Training rows, against the yardstick's."""
    rates = {label: [] for label, _ in THROUGHPUT_VARIANTS}
    for _ in range(repeats):
        for label, variant in THROUGHPUT_VARIANTS:
            rates[label].append(_variant_child("recipe", variant, steps))
    base_cpu = statistics.median(r["cpu_rate"] for r in rates[THROUGHPUT_VARIANTS[0][0]])
    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        for i, (label, variant) in enumerate(THROUGHPUT_VARIANTS):
            save = str(Path(tmp) / f"{i}.npy")
            _variant_child("same", variant, 10, ["--save", save])
            logits = np.load(save)
            reference = logits if reference is None else reference
            diff = float(np.abs(logits - reference).max())
            agree = float((logits.argmax(1) == reference.argmax(1)).mean())
            cpu = [r["cpu_rate"] for r in rates[label]]
            wall = [r["rate"] for r in rates[label]]
            rows.append((f"9. {label}: training img per CPU-second (wall img/s)",
                         f"{median_spread(cpu)} ({statistics.median(wall):.0f})",
                         f"x{statistics.median(cpu) / base_cpu:.2f}; after 2 epochs: val "
                         f"logits max diff {diff:.2g}, same top class on {agree:.1%}"))


def bench_members(repeats: int, steps: int, rows: list) -> None:
    rates = {label: [] for label, _ in MEMBER_VARIANTS}
    for _ in range(repeats):
        for label, variant in MEMBER_VARIANTS:
            rates[label].append(_variant_child("recipe", variant, steps)["cpu_rate"])
    base = statistics.median(rates[MEMBER_VARIANTS[0][0]])
    for label, _ in MEMBER_VARIANTS:
        rate = statistics.median(rates[label])
        rows.append((f"10. {label}: training img per CPU-second", median_spread(rates[label]),
                     f"cost x{base / rate:.2f} per epoch; 90 epochs = "
                     f"{90 * 28709 / rate / 60:.0f} CPU-min"))


def write_table(rows: list, out: Path, seconds: float) -> None:
    import torch

    head = [
        "# ferens benchmark",
        "",
        f"Command: `OMP_WAIT_POLICY=PASSIVE .venv/bin/python experiments/bench.py` "
        f"({seconds / 60:.1f} min).",
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}.",
        "Values are medians with the (min-max) spread over repeats; ratios come from the same run.",
        "",
        "| measurement | value | note |",
        "|---|---|---|",
    ]
    body = [f"| {a} | {b} | {c} |" for a, b, c in rows]
    out.write_text("\n".join(head + body) + "\n")
    print("\n".join(head + body))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="bare")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--contiguous", action="store_true")
    parser.add_argument("--engine", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--augment", default="light")
    parser.add_argument("--stem", default="default")
    parser.add_argument("--input-size", type=int, default=48)
    parser.add_argument("--crop", type=int, default=44)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--fused", action="store_true")
    parser.add_argument("--save", default="")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps")
    parser.add_argument("--only",
                        default="training,engine,data,inference,predict,default,ensemble")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench.md")
    ns = parser.parse_args()
    if ns.child:
        run_child(ns)
        return
    repeats, steps = (1, 10) if ns.quick else (3, 30)
    rows: list = []
    start = time.perf_counter()
    parts = ns.only.split(",")
    if "data" in parts:
        bench_data(repeats, rows)
    if "training" in parts:
        bench_training(repeats, steps, rows)
    if "engine" in parts:
        bench_engine(repeats, steps, rows)
    if "inference" in parts:
        bench_inference(repeats, rows)
    if "predict" in parts:
        bench_predict(repeats, rows)
    if "default" in parts:
        bench_default_model(repeats, rows)
    if "throughput" in parts:
        bench_throughput(repeats, 4 * steps, rows)
    if "members" in parts:
        bench_members(repeats, steps, rows)
    if "ensemble" in parts:
        rows.extend(child(["--kind", "report", "--threads", "1"])["rows"])
    write_table(rows, ns.out, time.perf_counter() - start)


if __name__ == "__main__":
    main()
