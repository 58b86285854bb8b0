"""A whole study from one TOML file: members (side by side, resumable), ensembles, report.

    ferens study experiments/study.toml            # trains what is missing, then combines
    ferens study experiments/study.toml --lanes 1  # one member at a time on every core
    ferens study experiments/study.toml --only strong-e25  # reproduce one member

Members train as subprocesses, ``lanes`` at a time with ``cores // lanes`` threads each
(``threads`` overrides that share; on a 2-core CPU two one-thread members beat one two-thread
member). On a GPU machine one member trains per GPU, with the cores split into its loader
workers. Finished members are skipped; interrupted ones resume from their last epoch. Stopping
the study (Ctrl-C, SIGTERM, on Linux even SIGKILL) stops its members with it
(``ferens.study.children``), and a member that another process is still training is reported and not
started a second time. With ``$FERENS_DEADLINE`` (a unix time) members stop gracefully before
it (``ferens.train.member``): such a member is collected with ``stopped_by_deadline`` in its
summary, kept out of the ensembles, and trained on (not skipped) by the next run. Each finished
member's small outputs are copied to ``results_dir/members/<name>`` at once, so nothing
finished is lost when a session ends. Then every ensemble method runs over all members (and
over each ``[[ensembles]]`` group: a named subset such as one recipe's seeds), the runs named
in ``adjust`` get a ``ferens adjust`` logit adjustment (into ``results_dir/adjusted``), and
one report covers them all.

``backend="ray"`` (``ferens study FILE --backend ray``) trains the members as Ray tasks
instead, on this machine or a cluster: see ``ferens.study.ray_backend``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from ferens.combine.adjust import SELECT
from ferens.combine.ensemble import METHODS as ALL_METHODS
from ferens.config import NAME_PATTERN, RANGES, TrainConfig, config_differences, read_text
from ferens.errors import FerensError
from ferens.outputs import check_creatable, folder_lock
from ferens.runs import member_outputs, read_json, store_member, write_json
from ferens.study.children import die_with_parent, sigterm_interrupts
from ferens.study.children import stop as stop_children
from ferens.study.lanes import gpu_lane_plan

BACKENDS = ("local", "ray")
# [ray]: read by ferens.study.ray_backend
TABLES = ("study", "defaults", "members", "ensembles", "ray")
GROUP_KEYS = {"name", "members", "methods"}  # an [[ensembles]] table
STUDY_KEYS = {  # every [study] key and what its value must be
    "results_dir": (str, "a folder path"), "lanes": (int, "a whole number >= 0"),
    "ensemble_methods": (list, f"a list of ensemble methods from {list(ALL_METHODS)}"),
    "ferplus": (str, "the path of fer2013new.csv"), "data": (str, "a FER2013 data path"),
    "extra_runs": (list, "a list of run folders"),
    "adjust": (list, "a list of member or ensemble method names"),
    "adjust_select": (str, f"one of {list(SELECT)}"),
    "adjust_max_accuracy_loss": (float, "a number from 0 to 1"),
    "runs_dir": (str, "a folder path for the members' run folders and checkpoints"),
}
# Overrides [study] runs_dir: where this machine keeps the members' checkpoints between sessions
RUNS_DIR_ENV = "FERENS_RUNS_DIR"
DEADLINE_ENV = "FERENS_DEADLINE"  # read by ferens.train.member too (not imported: it needs torch)


@dataclass(frozen=True)
class EnsembleGroup:
    """An ``[[ensembles]]`` table: ensembles over a named subset of the study's runs (e.g. the
    seeds of one recipe, or the members that can teach), written to
    ``results_dir/ensembles/<name>-<method>``."""

    name: str
    members: tuple[str, ...]
    methods: tuple[str, ...]


@dataclass
class Study:
    """A parsed study file: member configs plus what to do with them afterwards."""

    path: Path
    members: list[TrainConfig]
    results_dir: Path
    lanes: int = 0
    ensemble_methods: tuple[str, ...] = ALL_METHODS
    ferplus: str | None = None
    data: str | None = None
    extra_runs: list[str] = field(default_factory=list)
    adjust: list[str] = field(default_factory=list)
    adjust_select: str = "accuracy-budget"
    adjust_max_accuracy_loss: float = 0.01
    groups: list[EnsembleGroup] = field(default_factory=list)


def load_study(path: str | Path) -> Study:
    """Parse ``[study]``, ``[defaults]`` and ``[[members]]`` tables into typed configs."""
    path = Path(path)
    text = read_text(path, "study file")
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FerensError(f"{path}: cannot parse TOML ({exc})") from None
    head, defaults, entries, group_tables = _check_tables(spec, path)
    if not entries:
        raise FerensError(f"{path}: no [[members]] tables")
    runs_dir = os.environ.get(RUNS_DIR_ENV) or head.get("runs_dir")
    if runs_dir:  # the members' out_dir, unless a member names its own
        defaults = defaults | {"out_dir": str(Path(runs_dir).expanduser())}
    members = [TrainConfig.from_dict(defaults | entry, source=f"{path} member {i}")
               for i, entry in enumerate(entries)]
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise FerensError(f"{path}: member names repeat: {names}")
    methods = tuple(head.get("ensemble_methods", ALL_METHODS))
    unknown = sorted(set(methods) - set(ALL_METHODS))
    if unknown:
        raise FerensError(f"{path}: unknown ensemble method(s) {unknown}")
    adjust = list(head.get("adjust", []))
    unknown = sorted(set(adjust) - set(names) - set(methods))
    if unknown:
        raise FerensError(f"{path}: adjust names {unknown}, which are neither members nor "
                          "ensemble methods of this study")
    select = head.get("adjust_select", "accuracy-budget")
    if select not in SELECT:
        raise FerensError(f"{path}: adjust_select={select!r} is not one of {list(SELECT)}")
    runs = names + [Path(p).name for p in head.get("extra_runs", [])]
    groups = [_ensemble_group(t, i, runs, methods, path) for i, t in enumerate(group_tables)]
    if len({g.name for g in groups}) != len(groups):
        raise FerensError(f"{path}: [[ensembles]] names repeat: {[g.name for g in groups]}")
    folders = list(methods) + [f"{g.name}-{m}" for g in groups for m in g.methods]
    clash = sorted({f for f in folders if folders.count(f) > 1})
    if clash:
        raise FerensError(f"{path}: [[ensembles]] names give two ensembles the folder(s) {clash}; "
                          "rename the group")
    return Study(path=path, members=members,
                 results_dir=Path(head.get("results_dir", "results/study")),
                 lanes=int(head.get("lanes", 0)), ensemble_methods=methods,
                 ferplus=head.get("ferplus"), data=head.get("data"),
                 extra_runs=list(head.get("extra_runs", [])),
                 adjust=adjust,
                 adjust_select=select,
                 adjust_max_accuracy_loss=float(head.get("adjust_max_accuracy_loss", 0.01)),
                 groups=groups)


def _ensemble_group(table: object, i: int, runs: list[str], methods: tuple[str, ...],
                    path: Path) -> EnsembleGroup:
    """One checked ``[[ensembles]]`` table: a folder-safe name, two or more of the study's runs
    (members or extra_runs folder names), methods from ALL_METHODS (default: the study's)."""
    where = f"{path}: [[ensembles]] {i}"
    if not isinstance(table, dict):
        raise FerensError(f"{where}: must be a table")
    unknown = sorted(set(table) - GROUP_KEYS)
    if unknown:
        raise FerensError(f"{where}: unknown key(s) {unknown}; expected {sorted(GROUP_KEYS)}")
    name = table.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise FerensError(f"{where}: name={name!r}: expected a run-style name (ASCII letters, "
                          "digits, '.', '_', '+' and '-', starting with a letter or digit)")
    members = table.get("members")
    if (not isinstance(members, list) or len(members) < 2
            or not all(isinstance(m, str) for m in members) or len(set(members)) != len(members)):
        raise FerensError(f"{where} ({name}): members={members!r}: expected a list of two or "
                          "more distinct run names")
    unknown = sorted(set(members) - set(runs))
    if unknown:
        raise FerensError(f"{where} ({name}): {unknown} are neither members nor extra_runs of "
                          "this study")
    chosen = table.get("methods", list(methods))
    if (not isinstance(chosen, list) or not chosen
            or not all(isinstance(m, str) for m in chosen) or set(chosen) - set(ALL_METHODS)):
        raise FerensError(f"{where} ({name}): methods={chosen!r}: expected a list from "
                          f"{list(ALL_METHODS)}")
    return EnsembleGroup(name=name, members=tuple(members), methods=tuple(chosen))


def _check_tables(spec: dict, path: Path) -> tuple[dict, dict, list, list]:
    """([study], [defaults], [[members]], [[ensembles]]) after refusing unknown tables and keys
    and mistyped [study] values (member and default keys are checked by TrainConfig; the
    [[ensembles]] tables by _ensemble_group)."""
    unknown = sorted(set(spec) - set(TABLES))
    if unknown:
        raise FerensError(f"{path}: unknown table(s) {unknown}; a study file has [study], "
                          "[defaults], [[members]], [[ensembles]] and [ray]")
    head, defaults, entries = (spec.get("study", {}), spec.get("defaults", {}),
                               spec.get("members", []))
    groups = spec.get("ensembles", [])
    if not isinstance(groups, list):
        raise FerensError(f"{path}: ensembles must be [[ensembles]] tables, one per group")
    if not isinstance(head, dict) or not isinstance(defaults, dict):
        raise FerensError(f"{path}: [study] and [defaults] must be tables")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise FerensError(f"{path}: members must be [[members]] tables, one per member")
    unknown = sorted(set(head) - set(STUDY_KEYS))
    if unknown:
        raise FerensError(f"{path}: unknown [study] key(s) {unknown}; expected some of "
                          f"{sorted(STUDY_KEYS)}")
    for key, value in head.items():
        kind, expected = STUDY_KEYS[key]
        ok = (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1
              if kind is float else isinstance(value, kind))
        ok = ok and not isinstance(value, bool) and not (kind is int and value < 0)
        ok = ok and not (kind is list and not all(isinstance(v, str) for v in value))
        ok = ok and "\x00" not in (value if isinstance(value, str) else
                                   "".join(value) if kind is list else "")
        if not ok:
            raise FerensError(f"{path}: [study] {key}={value!r}: expected {expected}")
    if "ray" in spec:  # checked here too, so a typo in [ray] is never silently ignored
        from ferens.study.ray_backend import load_ray_settings

        load_ray_settings(path)
    return head, defaults, entries, groups


def lane_plan(pending: int, lanes: int = 0, cores: int | None = None) -> tuple[int, int]:
    """(lanes, threads per lane): by default one single-thread lane per core."""
    cores = cores or os.cpu_count() or 1
    lanes = lanes or cores
    lanes = max(1, min(lanes, pending or 1))
    return lanes, max(1, cores // lanes)


def stopped_by_deadline(run_dir: Path) -> bool:
    """Whether a run folder's summary says a deadline ended its training early."""
    try:
        return bool(read_json(run_dir / "summary.json").get("stopped_by_deadline"))
    except (OSError, ValueError, FerensError):
        return False


def has_summary(cfg: TrainConfig) -> bool:
    """A summary was written: the member finished, or a deadline stopped it."""
    return (cfg.run_dir / "summary.json").is_file()


def is_finished(cfg: TrainConfig) -> bool:
    return has_summary(cfg) and not stopped_by_deadline(cfg.run_dir)


def is_committed(cfg: TrainConfig, results_dir: Path) -> bool:
    """Already in ``results_dir`` from the same config, e.g. on a fresh clone with no runs/
    (a member a deadline stopped is not: it trains on)."""
    saved = results_dir / "members" / cfg.name
    if not (saved / "summary.json").is_file() or stopped_by_deadline(saved):
        return False
    before = TrainConfig.load(saved / "config.json")
    return not config_differences(before, cfg, ignore=("out_dir", "data", "threads", "workers"))


def collect_member(cfg: TrainConfig, results_dir: Path) -> Path:
    """Copy a finished member's small outputs into results (see ``store_member``)."""
    return store_member(results_dir, cfg.name, {
        name: (cfg.run_dir / name).read_bytes() for name in member_outputs(cfg.run_dir)})


def collect_finished(study: Study) -> list[str]:
    """Copy the small outputs of every member with a summary (finished, or stopped by a
    deadline) into results; returns their names."""
    done = [cfg for cfg in study.members if has_summary(cfg)]
    for cfg in done:
        collect_member(cfg, study.results_dir)
    return [cfg.name for cfg in done]


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


def pending_members(study: Study, only: list[str] | None = None
                    ) -> tuple[list[TrainConfig], list[str]]:
    """(members still to train, names already committed), after copying finished runs into
    results; ``only`` restricts the members to train."""
    unknown = sorted(set(only or []) - {m.name for m in study.members})
    if unknown:
        raise FerensError(f"{study.path}: no member(s) named {unknown}")
    collect_finished(study)
    committed = [m.name for m in study.members if is_committed(m, study.results_dir)]
    pending = [m for m in study.members
               if m.name not in committed and (not only or m.name in only)]
    return pending, committed


def check_trainable_members(study: Study, only: list[str] | None = None) -> None:
    """Refuse, before anything is collected or started, a member (of ``only``, else any) that
    timm or albumentations cannot build (`ferens.train.member.check_trainable`: the model, an
    ``augment_override``). Only a study that trains runs it: reading one never imports them."""
    from ferens.train.member import check_trainable

    for i, cfg in enumerate(study.members):
        if not only or cfg.name in only:
            try:
                check_trainable(cfg)
            except FerensError as exc:
                raise FerensError(f"{study.path} member {i}: {exc}") from None


def train_members(study: Study, lanes: int | None = None, poll: float = 5.0,
                  only: list[str] | None = None, threads: int | None = None) -> list[str]:
    """Train every unfinished member (or those in ``only``), ``lanes`` at a time; returns the
    names that failed."""
    pending, committed = pending_members(study, only)
    slots = plan_slots(study, pending, lanes, threads)
    where = (f"{len(slots)} GPU lane(s) x {slots[0].workers} loader worker(s)"
             if slots[0].gpu is not None else
             f"{len(slots)} lane(s) x {slots[0].threads} thread(s)")
    _say(f"{len(committed)} finished, {len(pending)} to train ({where}); "
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
            _say("interrupted; the members were stopped; run the same command again to resume")
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
                _say(f"NOT STARTED {cfg.name}: the deadline (${DEADLINE_ENV}) has passed")
                continue
            if _writer_elsewhere(cfg):
                failed.append(cfg.name)
                _say(f"NOT STARTED {cfg.name}: another ferens process is training "
                     f"{cfg.run_dir} (an earlier study still running?); stop it or let it "
                     "finish, then run the study again")
                continue
            slot = free.pop(0)
            running[cfg.name] = (_launch(cfg, slot), cfg, time.time(), slot)
            _say(f"started {cfg.name}" + (f" on GPU {slot.gpu}" if slot.gpu is not None
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
                    _say(f"STOPPED BY THE DEADLINE {name} after epoch {summary['epochs_run']} "
                         f"of {summary.get('epochs_planned')} ({minutes:.1f} min): test "
                         f"accuracy {acc:.4f} at its best epoch {summary['best_epoch']}; run "
                         "the study again to train on")
                else:
                    _say(f"finished {name} in {minutes:.1f} min: test accuracy {acc:.4f}")
            else:
                failed.append(name)
                _say(f"FAILED {name} (exit {proc.returncode}): {_last_line(cfg)}; "
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


def combine_and_report(study: Study) -> dict:
    """Every ensemble method over the finished members, then the ensembles of each
    ``[[ensembles]]`` group whose runs have all finished, then the report over everything."""
    from ferens.combine.adjust import adjust_run
    from ferens.combine.ensemble import build_ensemble
    from ferens.report.build import write_report

    members = [study.results_dir / "members" / m.name for m in study.members
               if (study.results_dir / "members" / m.name / "summary.json").is_file()]
    members += [Path(p) for p in study.extra_runs]
    combinable = [m for m in members if _fer2013_labels(m) and not stopped_by_deadline(m)]
    for m in members:
        if m in combinable:
            continue
        if stopped_by_deadline(m):
            _say(f"not ensembling {m.name}: a deadline stopped its training early")
        else:
            _say(f"not ensembling {m.name}: trained with --labels ferplus, so it is scored on "
                 "FER+ labels (val and test relabelled and filtered)")
    # (folder prefix, runs, methods): every member first, then each complete group
    jobs = [("", combinable, study.ensemble_methods)] if len(combinable) >= 2 else []
    by_name = {m.name: m for m in combinable}
    for group in study.groups:
        missing = [n for n in group.members if n not in by_name]
        if missing:
            _say(f"not building ensembles {group.name}: {missing} not finished (or not scored "
                 "on FER2013 labels)")
            continue
        jobs.append((f"{group.name}-", [by_name[n] for n in group.members], group.methods))
    ensembles = []
    for prefix, runs, methods in jobs:
        for method in methods:
            out = study.results_dir / "ensembles" / f"{prefix}{method}"
            build_ensemble(runs, method=method, out=out)
            ensembles.append(out)
            _say(f"ensemble {out.name}: test accuracy "
                 f"{read_json(out / 'summary.json')['test']['accuracy']:.4f}")
    adjusted = []
    for name in study.adjust:
        source = next((p for p in [study.results_dir / "members" / name, *ensembles]
                       if p.name == name and (p / "summary.json").is_file()), None)
        if source is None:
            _say(f"not adjusting {name}: it has not finished")
            continue
        out = study.results_dir / "adjusted" / f"{name}-adjusted"
        adjust_run(source, out, select=study.adjust_select,
                   max_accuracy_loss=study.adjust_max_accuracy_loss)
        adjusted.append(out)
        _say(f"adjusted {name}: test accuracy "
             f"{read_json(out / 'summary.json')['test']['accuracy']:.4f}")
    ferplus = study.ferplus if study.ferplus and Path(study.ferplus).is_file() else None
    report_dir = study.results_dir / "report"
    write_report(members + ensembles + adjusted, out=report_dir, ferplus=ferplus, data=study.data)
    _say(f"report: {report_dir / 'report.html'}")
    return {"members": [str(m) for m in members], "ensembles": [str(e) for e in ensembles],
            "adjusted": [str(a) for a in adjusted], "report": str(report_dir)}


def _fer2013_labels(run_dir: Path) -> bool:
    """Whether a run is scored on FER2013's labels (not a --labels ferplus member's)."""
    return (read_json(run_dir / "config.json").get("labels") or "fer2013") == "fer2013"


def run_study(path: str | Path, lanes: int | None = None, train: bool = True,
              only: list[str] | None = None, threads: int | None = None,
              backend: str = "local", address: str | None = None) -> dict:
    """Train what is missing (or only the members named in ``only``) with the local or the
    Ray backend, then ensemble and report; safe to re-run at any point."""
    if backend not in BACKENDS:
        raise FerensError(f"--backend {backend!r}: expected one of {list(BACKENDS)}")
    most = RANGES["threads"][1]
    if lanes is not None and not 0 <= lanes <= most:
        raise FerensError(f"--lanes {lanes}: expected 0 (one per core) or a number of lanes")
    if threads is not None and not 1 <= threads <= most:
        raise FerensError(f"--threads {threads}: expected a number of threads from 1 to {most}")
    if backend != "ray" and address:
        raise FerensError("--address names a Ray cluster; it needs --backend ray")
    if backend == "ray" and lanes is not None:
        raise FerensError("--lanes is for the local backend; Ray places members by the CPUs "
                          "and GPUs each one declares")
    study = load_study(path)
    if train and backend == "ray":
        from ferens.study import ray_backend as study_ray

        study_ray.import_ray()  # without Ray: one line on how to install it, before any work
        check_trainable_members(study, only)
        pending, committed = pending_members(study, only)
        failed = study_ray.train_members_ray(
            pending, study.results_dir, study_ray.load_ray_settings(study.path),
            committed=len(committed), address=address, threads=threads, say=_say)
    elif train:
        check_trainable_members(study, only)
        failed = train_members(study, lanes, only=only, threads=threads)
    else:
        failed = []
        _say(f"collected finished members: {collect_finished(study)}")
    outcome = combine_and_report(study)
    outcome["failed"] = failed
    return outcome


def _say(text: str) -> None:
    print(f"[study] {text}", file=sys.stderr, flush=True)
