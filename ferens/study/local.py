"""Training a study's members locally, as subprocesses side by side (lanes).

Members train as subprocesses, ``lanes`` at a time with ``cores // lanes`` threads each
(``threads`` overrides that share; on a 2-core CPU two one-thread members beat one two-thread
member). On a GPU machine one member trains per GPU, with the cores split into its loader
workers. Finished members are skipped; interrupted ones resume from their last epoch. Stopping
the study (Ctrl-C, SIGTERM, on Linux even SIGKILL) stops its members with it
(``ferens.study.children``), and a member that another process is still training is reported
and not started a second time. With ``$FERENS_DEADLINE`` no member starts after the deadline
(the members themselves stop before it: ``ferens.train.member``). Each finished member's
small outputs are copied to ``results_dir/members/<name>`` at once. The whole study (then
ensembles and report) is ``ferens.study.pipeline.run_study``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ferens.config import TrainConfig
from ferens.errors import FerensError
from ferens.io import check_creatable, folder_lock, read_json, write_json
from ferens.study.children import die_with_parent, sigterm_interrupts
from ferens.study.children import stop as stop_children
from ferens.study.lanes import gpu_lane_plan, lane_plan
from ferens.study.members import collect_member, has_summary, pending_members
from ferens.study.spec import Study

DEADLINE_ENV = "FERENS_DEADLINE"  # read by ferens.train.member too (not imported: it needs torch)


def cuda_device_count() -> int:
    """CUDA devices visible to training children (0 without torch's CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass
class Slot:
    """Where a lane's member runs: threads, loader workers and, on a GPU machine, its GPU."""

    threads: int
    workers: int | None = None
    gpu: int | None = None


def member_command(spec: Path, slot: Slot) -> list[str]:
    """The command that trains (or resumes) the member whose config is in ``spec``."""
    cmd = [sys.executable, "-m", "ferens.cli", "train-member", "--config", str(spec),
           "--threads", str(slot.threads), "--resume"]
    if slot.workers is not None:
        cmd += ["--workers", str(slot.workers)]
    return cmd


def child_visible_devices(gpu: int, parent_mask: str | None) -> str:
    """The CUDA_VISIBLE_DEVICES of a child that trains on the parent's GPU number ``gpu``:
    the parent's own entry (an index, a UUID or a MIG id) when the parent was masked."""
    entries = [e.strip() for e in (parent_mask or "").split(",") if e.strip()]
    if not entries:
        return str(gpu)
    if gpu >= len(entries):
        raise FerensError(f"GPU {gpu} is not among CUDA_VISIBLE_DEVICES={parent_mask!r}")
    return entries[gpu]


# tcmalloc (Debian's libtcmalloc-minimal4) gives the training children bit-identical results and
# more images per CPU-second (results/README.md, study v3 throughput); used when installed.
ALLOCATOR_ENV = "FERENS_ALLOCATOR"  # "system" keeps the C library's malloc


def allocator_env(env: dict, machine: str | None = None, root: str = "/") -> dict:
    """The LD_PRELOAD a training child gets: tcmalloc when installed, unless the user set
    LD_PRELOAD or FERENS_ALLOCATOR=system; nothing otherwise."""
    if env.get("LD_PRELOAD") or env.get(ALLOCATOR_ENV, "tcmalloc") == "system":
        return {}
    lib = (Path(root) / "usr/lib" / f"{machine or os.uname().machine}-linux-gnu"
           / "libtcmalloc_minimal.so.4")
    return {"LD_PRELOAD": str(lib)} if lib.is_file() else {}


def _launch(cfg: TrainConfig, slot: Slot) -> subprocess.Popen:
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    spec = cfg.run_dir.parent / f"{cfg.name}.study.json"
    write_json(spec, cfg.to_dict())
    env = os.environ | {"OMP_NUM_THREADS": str(slot.threads), "OMP_WAIT_POLICY": "PASSIVE"}
    env |= allocator_env(env)
    if slot.gpu is not None:  # the child sees only its own GPU, as cuda:0
        env["CUDA_VISIBLE_DEVICES"] = child_visible_devices(
            slot.gpu, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if cfg.batch_augmented and slot.workers:  # augmented on the GPU: workers would idle
        slot = replace(slot, workers=0)
    with open(_log_path(cfg), "a") as log:  # the child keeps its copy
        return subprocess.Popen(member_command(spec, slot), stdout=log,
                                stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent())


def _log_path(cfg: TrainConfig) -> Path:
    return cfg.run_dir.parent / f"{cfg.name}.log"


def plan_slots(study: Study, pending: list[TrainConfig], lanes: int | None = None,
               threads: int | None = None, gpus: int | None = None) -> list[Slot]:
    """One slot per lane. CPU: ``lanes`` single-thread lanes per core (``threads`` overrides
    the per-lane share). GPU machine: one lane per GPU with the cores as loader workers."""
    gpus = cuda_device_count() if gpus is None else gpus
    if gpus and any(m.device != "cpu" for m in pending):
        n_lanes, workers = gpu_lane_plan(len(pending), gpus)
        return [Slot(threads=1, workers=workers, gpu=i) for i in range(n_lanes)]
    n_lanes, per_lane = lane_plan(len(pending), lanes if lanes is not None else study.lanes)
    return [Slot(threads=threads or per_lane) for _ in range(n_lanes)]


def train_members(study: Study, lanes: int | None = None, poll: float = 5.0,
                  only: list[str] | None = None, threads: int | None = None) -> list[str]:
    """Train every unfinished member (or those in ``only``), ``lanes`` at a time; returns the
    names that failed."""
    pending, committed = pending_members(study, only)
    slots = plan_slots(study, pending, lanes, threads)
    where = (f"{len(slots)} GPU lane(s) x {slots[0].workers} loader worker(s)"
             if slots[0].gpu is not None else
             f"{len(slots)} lane(s) x {slots[0].threads} thread(s)")
    say(f"{len(committed)} finished, {len(pending)} to train ({where}); "
        "logs in <out_dir>/<name>.log")
    running: dict[str, tuple[subprocess.Popen, TrainConfig, float, Slot]] = {}
    free = list(slots)
    failed = []
    try:
        with sigterm_interrupts():  # a SIGTERM stops the members as Ctrl-C does
            _run_lanes(study, pending, running, free, failed, poll)
    except BaseException as exc:  # Ctrl-C, SIGTERM or a crash here: never leave orphans
        stop_children(proc for proc, *_ in running.values())
        if isinstance(exc, KeyboardInterrupt):
            say("interrupted; the members were stopped; run the same command again to resume")
        raise
    return failed


def _run_lanes(study: Study, pending: list[TrainConfig], running: dict, free: list[Slot],
               failed: list[str], poll: float) -> None:
    """Start members into free slots and collect them as they finish, until none is left."""
    while pending or running:
        while pending and free:
            cfg = pending.pop(0)
            if _deadline_passed():
                failed.append(cfg.name)
                say(f"NOT STARTED {cfg.name}: the deadline (${DEADLINE_ENV}) has passed")
                continue
            if _writer_elsewhere(cfg):
                failed.append(cfg.name)
                say(f"NOT STARTED {cfg.name}: another ferens process is training "
                    f"{cfg.run_dir} (an earlier study still running?); stop it or let it "
                    "finish, then run the study again")
                continue
            slot = free.pop(0)
            running[cfg.name] = (_launch(cfg, slot), cfg, time.time(), slot)
            say(f"started {cfg.name}" + (f" on GPU {slot.gpu}" if slot.gpu is not None
                                          else ""))
        if not running:
            break
        time.sleep(poll)
        for name, (proc, cfg, start, slot) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            free.append(slot)
            minutes = (time.time() - start) / 60
            if proc.returncode == 0 and has_summary(cfg):
                collect_member(cfg, study.results_dir)
                summary = read_json(cfg.run_dir / "summary.json")
                acc = summary["test"]["accuracy"]
                if summary.get("stopped_by_deadline"):
                    say(f"STOPPED BY THE DEADLINE {name} after epoch {summary['epochs_run']} "
                        f"of {summary.get('epochs_planned')} ({minutes:.1f} min): test "
                        f"accuracy {acc:.4f} at its best epoch {summary['best_epoch']}; run "
                        "the study again to train on")
                else:
                    say(f"finished {name} in {minutes:.1f} min: test accuracy {acc:.4f}")
            else:
                failed.append(name)
                say(f"FAILED {name} (exit {proc.returncode}): {_last_line(cfg)}; "
                    f"see {_log_path(cfg)}")


def _deadline_passed() -> bool:
    raw = os.environ.get(DEADLINE_ENV, "").strip()
    try:
        return bool(raw) and time.time() >= float(raw)
    except ValueError:
        return False  # the member itself reports the bad value


def _writer_elsewhere(cfg: TrainConfig) -> bool:
    """Whether another process (a study still running, a train-member) holds the run folder."""
    check_creatable(cfg.run_dir)  # a file in the way is its own one-line error
    try:
        with folder_lock(cfg.run_dir):
            return False
    except FerensError:
        return True


def _last_line(cfg: TrainConfig) -> str:
    """The last line of a member's log: its one-line error when it failed on bad input."""
    try:
        lines = _log_path(cfg).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "empty log"


def say(text: str) -> None:
    print(f"[study] {text}", file=sys.stderr, flush=True)
