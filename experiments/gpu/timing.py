"""Timing on the device before training, and the members that fit the time left.

    python experiments/gpu/timing.py measure STUDY --out timing.json --md timing.md \\
        [--budget SECONDS] [--members A B ...] [--loader-workers 0,8]
    python experiments/gpu/timing.py choose timing.json --budget SECONDS [--study STUDY]

``measure`` runs on the study's device (the first member's): the start-up of a training
process (python, torch, ferens, the device), the data load, the loader's images/s for the
albumentations recipe with each number of workers, the torch recipe's augmentation images/s on
the device, every member's training step with and without a synchronisation after each step,
one real epoch of the first member (the others scaled from it by their step time), the
validation pass with the selection TTA, the checkpoint, and the estimate of writing the
predictions. From these it estimates every member's whole run, and with ``--budget`` (seconds
until the members' deadline) chooses, in the study's order (its priority), the members whose
estimates fit one after another: the first member always (a deadline stops it gracefully),
each later one only if it fits in what is left. It writes the numbers (JSON), a Markdown table
(for results/bench.md) and prints the chosen names last.

``choose`` chooses again from saved numbers, for a later call on a still-warm machine: members
already finished are dropped, a member stopped part-way is costed for its remaining epochs.
Exit codes: 0, 2 (bad arguments or a member that cannot run here: one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from ferens.errors import FerensError  # noqa: E402

STEPS = 20         # timed steps per member, after WARMUP
WARMUP = 5
LOADER_SECONDS = 4.0  # wall time spent reading batches per loader setting
STARTUP_CODE = ("import time, sys; t = time.perf_counter(); import torch, ferens.train.member; "
                "torch.zeros(1, device=sys.argv[1]).sum().item(); "
                "print(time.perf_counter() - t)")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cycle(loader, cfg, epochs: int = 1000):
    """(epoch, images, idx) batches from consecutive epochs of ``loader``."""
    for epoch in range(1, epochs + 1):
        empty = True
        for images, idx in loader.epoch(epoch):
            empty = False
            yield epoch, images, idx
        if empty:
            raise FerensError(f"{cfg.name}: the loader yields no batch (too few images?)")


def _batches(loader, cfg, needed: int) -> list:
    out = []
    for batch in _cycle(loader, cfg):
        out.append(batch)
        if len(out) == needed:
            return out
    return out


def step_seconds(parts, cfg, loader, sync_each: bool, steps: int = STEPS) -> float:
    """Seconds per training step over ``steps`` steps after WARMUP, synchronising after every
    step or once at the end."""
    from ferens.train.loop import train_step

    parts.model.train()
    warmup = min(WARMUP, steps)
    batches = _batches(loader, cfg, warmup + steps)
    for epoch, images, idx in batches[:warmup]:
        train_step(parts, cfg, epoch, images, idx)
    _sync(parts.device)
    start = time.perf_counter()
    for epoch, images, idx in batches[warmup:]:
        loss, _, _ = train_step(parts, cfg, epoch, images, idx)
        if sync_each:
            loss.item()  # what a per-step host read costs
    _sync(parts.device)
    return (time.perf_counter() - start) / steps


def loader_rate(images, labels, cfg, device, workers: int) -> dict:
    """Images/s of the albumentations loader with ``workers`` processes (time to the first
    batch apart), or the torch recipe's gather + augmentation on the device (workers -1)."""
    from ferens.data.loader import DeviceLoader, TrainLoader

    row = {"workers": workers}
    try:
        if workers < 0:
            row["recipe"] = cfg.augment if cfg.batch_augmented else "torch-strong"
            loader = DeviceLoader(images, labels, replace(cfg, augment=row["recipe"]), device)
        else:
            row["recipe"] = "strong" if cfg.batch_augmented else cfg.augment
            loader = TrainLoader(images, labels, replace(cfg, augment=row["recipe"],
                                                         workers=workers), device)
    except ImportError as exc:  # albumentations is not on the device unless carried
        return row | {"error": f"{type(exc).__name__}: {exc}"}
    start = time.perf_counter()
    seen, first = 0, None
    batches = _cycle(loader, cfg, epochs=50)
    for _, x, _ in batches:
        if first is None:  # worker start-up (or the copy of the images to the device)
            _sync(device)
            first = time.perf_counter() - start
            start = time.perf_counter()
            continue
        seen += len(x)
        if time.perf_counter() - start > LOADER_SECONDS:
            break
    _sync(device)
    seconds = time.perf_counter() - start
    batches.close()
    del batches, loader
    return row | {"first_batch_seconds": first, "images_per_second": seen / max(seconds, 1e-9)}


def member_costs(cfg, splits, device, real_epoch: bool, steps: int = STEPS) -> dict:
    """The measured costs of one member on ``device``."""
    import torch
    from safetensors.torch import save_file

    from ferens.data.loader import make_loader
    from ferens.models.factory import count_parameters
    from ferens.train.checkpoint import TrainingState, _state_dict, save_checkpoint
    from ferens.train.loop import build_parts, evaluate, train_one_epoch
    from ferens.train.member import finish_seconds

    train = splits["train"]
    start = time.perf_counter()
    parts = build_parts(cfg, train, device)
    loader = make_loader(train.images, train.labels, cfg, device)
    _sync(device)
    costs = {"parameters": count_parameters(parts.model),
             "build_seconds": time.perf_counter() - start,
             "batches_per_epoch": sum(1 for _ in loader.batches),
             "step_seconds_sync_each": step_seconds(parts, cfg, loader, True, steps),
             "step_seconds": step_seconds(parts, cfg, loader, False, steps)}
    if real_epoch:
        costs["epoch_seconds"] = train_one_epoch(parts, loader, cfg, 1, False)["seconds"]
        costs["epoch_measured"] = True
    start = time.perf_counter()
    evaluate(parts, splits["val"], cfg)
    costs["val_seconds"] = time.perf_counter() - start
    costs["finish_seconds"] = finish_seconds(cfg, splits, costs["val_seconds"])
    folder = Path(tempfile.mkdtemp(prefix="ferens-timing-"))
    try:
        start = time.perf_counter()
        save_file(_state_dict(parts.eval_model), str(folder / "best.safetensors"))
        save_checkpoint(folder, parts, TrainingState(epoch=1, rows=[]))
        costs["checkpoint_seconds"] = time.perf_counter() - start
        costs["checkpoint_mb"] = sum(p.stat().st_size for p in folder.rglob("*")
                                     if p.is_file()) / 1e6
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if device.type == "cuda":
        costs["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 1e6
        torch.cuda.reset_peak_memory_stats(device)
    del parts, loader
    return costs


def missing_requirements(cfg) -> list[str]:
    """Optional packages a member needs that this interpreter lacks."""
    import importlib.util

    needs = []
    if not cfg.batch_augmented and (cfg.augment != "none" or cfg.crop_size
                                    or cfg.augment_override):
        needs.append("albumentations")
    if cfg.input_size != 48:
        needs.append("albumentations")
    if cfg.imbalance == "oversample":
        needs.append("imblearn")
    return sorted({n for n in needs if importlib.util.find_spec(n) is None})


def estimate_seconds(costs: dict, startup: float, done_epochs: int = 0) -> float:
    """A member's whole run from its costs: start-up, build, every remaining epoch with its
    validation, the checkpoints (every ``checkpoint_interval`` seconds, 0 = every epoch), and
    the predictions."""
    epochs = max(0, costs["epochs"] - done_epochs)
    per_epoch = costs["epoch_seconds"] + costs["val_seconds"]
    training = epochs * per_epoch
    interval = costs["checkpoint_interval"]
    every = max(1, math.floor(interval / per_epoch)) if interval else 1
    checkpoints = math.ceil(epochs / every) + 1
    return (startup + costs["build_seconds"] + training
            + checkpoints * costs["checkpoint_seconds"] + costs["finish_seconds"])


def measure(study_path: Path, names: list[str] | None = None,
            loader_workers: tuple[int, ...] = (0, 8), steps: int = STEPS,
            seconds: float | None = None, save=None) -> dict:
    """Every measurement for the members (all, or ``names``, in the study's order).

    With ``seconds``, a member is timed only while the time spent so far plus the slowest
    member timed so far fits in it (the first member always is); the rest are recorded as
    not timed, so a tight call spends its time training rather than timing. ``save`` (a
    callable) receives the numbers after every member, so a killed run leaves what it had."""
    began = time.perf_counter()
    import torch

    from ferens.models.inference import configure_threads, select_device
    from ferens.provenance import library_versions
    from ferens.study.spec import load_study
    from ferens.train.checkpoint import checkpoint_interval
    from ferens.train.member import load_splits

    study = load_study(study_path)
    members = [m for m in study.members if not names or m.name in names]
    unknown = sorted(set(names or []) - {m.name for m in members})
    if unknown or not members:
        raise FerensError(f"{study_path}: no member(s) named {unknown or names}")
    first = members[0]
    device = select_device(first.device)
    configure_threads(first.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = {"study": str(study_path), "device": device.type,
           "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                           else platform.processor() or platform.machine()),
           "cores": os.cpu_count(), "versions": library_versions(), "measured_at": time.time()}
    start = time.perf_counter()
    probe = subprocess.run([sys.executable, "-c", STARTUP_CODE, str(device)],
                           capture_output=True, text=True, cwd=REPO, timeout=300)
    if probe.returncode:
        raise FerensError(f"a training process cannot start: {probe.stderr.strip()[-300:]}")
    out["process_startup_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    splits = load_splits(first)
    out["data_load_seconds"] = time.perf_counter() - start
    out["startup_seconds"] = out["process_startup_seconds"] + out["data_load_seconds"]
    train = splits["train"]
    out["loader"] = [loader_rate(train.images, train.labels, first, device, w)
                     for w in (-1, *loader_workers)]
    out["members"] = {}
    reference = None  # (real epoch seconds / (batches x step seconds)) of the first member
    slowest = 0.0
    for cfg in members:
        spent = time.perf_counter() - began
        if seconds is not None and reference is not None and spent + slowest > seconds:
            out["members"][cfg.name] = {"error": f"not timed (the timing stage had "
                                                 f"{seconds:.0f} s)", "epochs": cfg.epochs}
            continue
        member_start = time.perf_counter()
        missing = missing_requirements(cfg)
        if missing:
            out["members"][cfg.name] = {"error": f"needs {', '.join(missing)} (not installed "
                                                 "here)", "epochs": cfg.epochs}
            continue
        member_splits = splits if _same_data(cfg, first) else load_splits(cfg)
        costs = member_costs(cfg, member_splits, device, reference is None, steps)
        if reference is None:
            reference = costs["epoch_seconds"] / (costs["batches_per_epoch"]
                                                  * costs["step_seconds"])
        else:
            costs["epoch_seconds"] = (reference * costs["batches_per_epoch"]
                                      * costs["step_seconds"])
            costs["epoch_measured"] = False
        costs["epochs"], costs["batch_size"] = cfg.epochs, cfg.batch_size
        costs["checkpoint_interval"] = checkpoint_interval(device)
        costs["estimate_seconds"] = estimate_seconds(costs, out["startup_seconds"])
        costs["timing_seconds"] = time.perf_counter() - member_start
        slowest = max(slowest, costs["timing_seconds"])
        out["members"][cfg.name] = costs
        if save is not None:
            save(out)
    return out


def _same_data(a, b) -> bool:
    keys = ("data", "labels", "ferplus", "max_train_samples", "seed")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def _progress(study_path: Path | None) -> dict[str, tuple[str, int]]:
    """Per member of the study: ('finished', 0), or ('partial', epochs done) from its run
    folder's checkpoint. Reads the study file and run folders only (no torch, no sklearn: this
    runs between the calls' stages, where every second is device time)."""
    if study_path is None:
        return {}
    spec = tomllib.loads(study_path.read_text())
    head, defaults = spec.get("study", {}), spec.get("defaults", {})
    runs = os.environ.get("FERENS_RUNS_DIR") or head.get("runs_dir")
    results = Path(head.get("results_dir", "results/study"))
    state = {}
    for member in spec.get("members", []):
        values = defaults | member
        name = values["name"]
        run_dir = Path(runs or values.get("out_dir", "runs")) / name
        if _finished(run_dir) or _finished(results / "members" / name):
            state[name] = ("finished", 0)
            continue
        latest = run_dir / "checkpoint" / "latest.json"
        try:
            state[name] = ("partial", int(json.loads(latest.read_text())["epoch"]))
        except (OSError, ValueError, KeyError):
            pass
    return state


def _finished(run_dir: Path) -> bool:
    try:
        return not json.loads((run_dir / "summary.json").read_text()).get("stopped_by_deadline")
    except (OSError, ValueError):
        return False


def untimed_choice(study_path: Path, names: list[str] | None = None) -> dict:
    """The plan when there are no timing numbers (the timing stage failed): the first member
    in priority order (of ``names``, if given) that has not finished; its deadline stops it
    gracefully, so it brings its predictions back whatever it costs."""
    progress = _progress(study_path)
    members = [m["name"] for m in tomllib.loads(study_path.read_text()).get("members", [])]
    chosen, skipped = [], []
    for name in members:
        if names and name not in names:
            continue
        status, done = progress.get(name, ("new", 0))
        if status == "finished":
            skipped.append({"name": name, "why": "finished"})
        elif not chosen:
            chosen.append({"name": name, "estimate_seconds": None, "fits": None,
                           "resumes_after_epoch": done})
        else:
            skipped.append({"name": name, "why": "not timed: only the first member trains"})
    return {"budget_seconds": None, "chosen": chosen, "skipped": skipped, "untimed": True}


def choose(timing: dict, budget: float, study_path: Path | None = None) -> dict:
    """The members to train in ``budget`` seconds: in priority order, the first runnable one
    always, each later one if its estimate fits in what is left."""
    progress = _progress(study_path)
    # the study's own process starts before its first member does
    chosen, skipped, left = [], [], budget - timing["process_startup_seconds"]
    for name, costs in timing["members"].items():
        if "error" in costs:
            skipped.append({"name": name, "why": costs["error"]})
            continue
        status, done = progress.get(name, ("new", 0))
        if status == "finished":
            skipped.append({"name": name, "why": "finished"})
            continue
        cost = estimate_seconds(costs, timing["startup_seconds"], done)
        # what it takes to bring anything back: start, one epoch, a checkpoint, predictions
        least = (timing["startup_seconds"] + costs["build_seconds"] + costs["epoch_seconds"]
                 + costs["val_seconds"] + costs["checkpoint_seconds"] + costs["finish_seconds"])
        if cost <= left or (not chosen and least <= left):
            chosen.append({"name": name, "estimate_seconds": round(cost, 1),
                           "fits": cost <= left, "resumes_after_epoch": done})
            left -= cost
        else:
            skipped.append({"name": name, "why": f"needs ~{cost:.0f} s, {max(left, 0):.0f} s "
                                                 "left"})
    untimed = [s for s in skipped if s["why"].startswith("not timed")]
    if not chosen and untimed:  # the timed ones have finished: the next one, its cost unknown
        first = untimed[0]
        skipped.remove(first)
        chosen.append({"name": first["name"], "estimate_seconds": None, "fits": None,
                       "resumes_after_epoch": progress.get(first["name"], ("new", 0))[1]})
    return {"budget_seconds": budget, "chosen": chosen, "skipped": skipped}


def markdown(timing: dict) -> str:
    """The measurements as Markdown tables (for results/bench.md)."""
    lines = [f"Device: {timing['device_name']} ({timing['device']}), {timing['cores']} cores; "
             + ", ".join(f"{k} {v}" for k, v in timing["versions"].items() if v) + ".", "",
             "| measurement | value |", "|---|---|",
             f"| training process start-up: python + torch + ferens + device (s) | "
             f"{timing['process_startup_seconds']:.1f} |",
             f"| data load from the cache (s) | {timing['data_load_seconds']:.1f} |"]
    for row in timing["loader"]:
        what = (f"{row['recipe']} on the device (gather + augment)" if row["workers"] < 0
                else f"{row['recipe']} loader, {row['workers']} worker(s)")
        value = (row["error"] if "error" in row else
                 f"{row['images_per_second']:.0f} img/s (first batch "
                 f"{row['first_batch_seconds']:.1f} s)")
        lines.append(f"| {what} | {value} |")
    lines += ["", "| member | parameters | step ms, sync each / none | img/s | epoch s | val s "
              "| checkpoint s (MB) | predictions s (est.) | whole run s (est.) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, c in timing["members"].items():
        if "error" in c:
            lines.append(f"| {name} | {c['error']} | | | | | | | |")
            continue
        rate = f"{c['batch_size'] / c['step_seconds']:.0f}"
        lines.append(
            f"| {name} | {c['parameters'] / 1e6:.1f}M | {1e3 * c['step_seconds_sync_each']:.1f}"
            f" / {1e3 * c['step_seconds']:.1f} | {rate} | {c['epoch_seconds']:.1f}"
            f"{'' if c.get('epoch_measured') else ' (scaled)'} | {c['val_seconds']:.1f} | "
            f"{c['checkpoint_seconds']:.1f} ({c['checkpoint_mb']:.0f}) | "
            f"{c['finish_seconds']:.1f} | {c['estimate_seconds']:.0f} ({c['epochs']} epochs) |")
    plan = timing.get("plan")
    if plan:
        budget = ("without timing numbers" if plan["budget_seconds"] is None
                  else f"for {plan['budget_seconds']:.0f} s")
        lines += ["", f"Chosen {budget}: "
                  + (", ".join(c["name"] for c in plan["chosen"]) or "none")
                  + "; skipped: " + (", ".join(f"{s['name']} ({s['why']})"
                                               for s in plan["skipped"]) or "none") + "."]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("measure")
    p.add_argument("study", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--md", type=Path)
    p.add_argument("--budget", type=float)
    p.add_argument("--members", nargs="*")
    p.add_argument("--loader-workers", default="0,8",
                   help="worker counts for the albumentations loader ('' for none)")
    p.add_argument("--steps", type=int, default=STEPS, help="timed steps per member")
    p.add_argument("--seconds", type=float,
                   help="time members only while they fit in this many seconds")
    p = sub.add_parser("choose")
    p.add_argument("timing", type=Path)
    p.add_argument("--budget", type=float, required=True)
    p.add_argument("--study", type=Path)
    p.add_argument("--md", type=Path, help="rewrite the Markdown table with the plan")
    p.add_argument("--members", nargs="*",
                   help="without timing numbers: the members to choose from")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "measure":
            workers = tuple(int(w) for w in args.loader_workers.split(",") if w.strip())

            def save(numbers: dict) -> None:  # after every member: a kill keeps the rest
                _write(args.out, json.dumps(numbers, indent=1))

            timing = measure(args.study, args.members or None, workers, max(1, args.steps),
                             args.seconds, save)
            if args.budget is not None:
                timing["plan"] = choose(timing, args.budget, args.study)
            save(timing)
            text = markdown(timing)
            if args.md:
                _write(args.md, text)
            print(text)
        elif not args.timing.is_file():
            if args.study is None:
                raise FerensError(f"{args.timing}: no timing numbers, and no --study to "
                                  "choose from")
            print(f"timing: {args.timing} is missing (the timing stage failed?): training "
                  "the first unfinished member, untimed", file=sys.stderr)
            timing = {"plan": untimed_choice(args.study, args.members or None)}
        else:
            timing = json.loads(args.timing.read_text())
            timing["plan"] = choose(timing, args.budget, args.study)
            _write(args.timing, json.dumps(timing, indent=1))
            if args.md:
                _write(args.md, markdown(timing))
        plan = timing.get("plan")
        if plan:
            for s in plan["skipped"]:
                print(f"timing: skipped {s['name']}: {s['why']}", file=sys.stderr)
            if not plan["chosen"] and not all(s["why"] == "finished" for s in plan["skipped"]):
                print("timing: error: no member fits the time left or can run here",
                      file=sys.stderr)
                return 2
            print(" ".join(c["name"] for c in plan["chosen"]))
    except (FerensError, OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        print(f"timing: error: {exc}", file=sys.stderr)
        return 2
    return 0



if __name__ == "__main__":
    sys.exit(main())
