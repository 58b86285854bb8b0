"""``ferens study FILE --backend ray``: a study's members as Ray tasks, on one machine or many.

Every member still to train becomes one Ray task that declares its resources from its config
(CPUs = its threads plus its loader workers, one GPU when it trains on CUDA), so Ray's own
scheduler places it on a node with those free. A CUDA member that names no loader workers gets
the local backend's share (``ferens.study.lanes.gpu_lane_plan`` on the largest node), unless it
augments on the GPU (``torch-*`` recipes), which needs none. A task trains its member in a
fresh worker process (``train_member(..., resume=True)``), in ``<checkpoint_root>/<name>`` on
that node (the member's ``out_dir`` unless the study sets one), and returns the member's small
outputs as bytes. The driver writes them into ``results_dir/members/<name>`` as each member
finishes, exactly where the local backend puts them, so no shared filesystem is needed and
nothing finished is lost when the driver stops. Checkpoints stay on the worker's disk.

When a worker process or its node dies, Ray runs the task again, up to ``max_retries`` times;
the retry resumes from the member's last per-epoch checkpoint wherever it can see it (the same
node, or a shared ``checkpoint_root``) and otherwise starts over, to the same result either
way. A member that raises (bad data, a missing GPU) is not retried: it is reported with its
error while the others finish. Ray tasks, not Ray Tune trials: a study's members are fixed
configs, not a search, and Tune's schedulers, trial folders and result syncing would only
stand between a member and the run folder it already writes.

Optional settings in the study file::

    [ray]
    max_retries = 3                       # runs after the first when a worker dies
    checkpoint_root = "/scratch/ferens"   # where members train on the workers [out_dir]
"""

from __future__ import annotations

import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ferens.config import TrainConfig
from ferens.errors import FerensError
from ferens.io import read_json
from ferens.runs import member_outputs, store_member
from ferens.study.lanes import gpu_lane_plan

INSTALL_HINT = "--backend ray needs Ray, an optional extra: pip install 'ferens[ray]'"


@dataclass
class RaySettings:
    """The ``[ray]`` table of a study file."""

    max_retries: int = 3
    checkpoint_root: str | None = None


def load_ray_settings(path: str | Path) -> RaySettings:
    """Read and check ``[ray]``; a study file without one gets the defaults."""
    path = Path(path)
    table = tomllib.loads(path.read_text()).get("ray", {})
    unknown = sorted(set(table) - set(RaySettings.__dataclass_fields__))
    if unknown:
        raise FerensError(f"{path}: unknown [ray] key(s) {unknown}")
    retries = table.get("max_retries", RaySettings.max_retries)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise FerensError(f"{path}: [ray] max_retries={retries!r}: expected an integer >= 0")
    root = table.get("checkpoint_root")
    if root is not None and (not isinstance(root, str) or not root):
        raise FerensError(f"{path}: [ray] checkpoint_root={root!r}: expected a folder path")
    return RaySettings(max_retries=retries, checkpoint_root=root)


def import_ray():
    """The ``ray`` module, or one clear line on how to install it."""
    try:
        import ray
    except ImportError:
        raise FerensError(INSTALL_HINT) from None
    return ray


def trains_on_gpu(cfg: TrainConfig, cluster_gpus: float) -> bool:
    return cfg.device.startswith("cuda") or (cfg.device == "auto" and cluster_gpus > 0)


def task_config(cfg: TrainConfig, threads: int | None, checkpoint_root: str | None,
                node: tuple[float, float] = (0, 0)) -> TrainConfig:
    """The config a task trains: a concrete thread count (``threads``, else the member's own,
    else one), loader workers for a GPU member that names none (from ``node``, the largest
    node's (CPUs, GPUs)) and, with a checkpoint root, the run folder under it."""
    changes: dict = {"threads": threads or cfg.threads or 1}
    cpus, gpus = node
    if (not cfg.workers and not cfg.batch_augmented and cfg.engine >= 2
            and trains_on_gpu(cfg, gpus) and gpus):
        changes["workers"] = gpu_lane_plan(1, int(gpus), int(cpus // gpus))[1]
    if checkpoint_root:
        changes["out_dir"] = checkpoint_root
    return replace(cfg, **changes)


def member_resources(cfg: TrainConfig, cluster_gpus: float) -> dict:
    """Ray resources of a member: its threads plus loader workers as CPUs; one GPU when it
    trains on CUDA (``auto`` does wherever the cluster has a GPU)."""
    gpu = trains_on_gpu(cfg, cluster_gpus)
    return {"num_cpus": cfg.threads + cfg.workers, "num_gpus": 1 if gpu else 0}


def run_member(values: dict) -> dict:
    """The body of a Ray task: train or resume one member on this node and return its small
    outputs as ``{relative path: bytes}``, with where it ran and the epoch it resumed after."""
    from ferens.train.member import train_member

    cfg = TrainConfig.from_dict(values)
    latest = cfg.run_dir / "checkpoint" / "latest.json"
    resumed = (read_json(latest).get("epoch", 0)
               if latest.is_file() and not (cfg.run_dir / "summary.json").is_file() else 0)
    train_member(cfg, resume=True, show_progress=False)
    return {"outputs": {name: (cfg.run_dir / name).read_bytes()
                        for name in member_outputs(cfg.run_dir)},
            "node": socket.gethostname(), "resumed_after_epoch": resumed}


def write_member_outputs(results_dir: Path, name: str, outputs: dict[str, bytes]) -> Path:
    """Write a member's returned outputs under ``results_dir/members/<name>``, whole (see
    ``ferens.runs.store_member``: never over files ferens did not write)."""
    return store_member(results_dir, name, outputs)


def _largest_node(ray) -> tuple[float, float]:
    """(CPUs, GPUs) of the largest live node: a member needing more can never start."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return (max((r.get("CPU", 0) for r in nodes), default=0),
            max((r.get("GPU", 0) for r in nodes), default=0))


def _failure(ray, exc: Exception, retries: int) -> str:
    """One line for a task that failed: the member's own error, or how its worker died."""
    cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause else exc
    text = str(cause).strip()
    line = f"{type(cause).__name__}: {text.splitlines()[0] if text else ''}"
    if isinstance(exc, ray.exceptions.RayTaskError):
        return line
    return f"its worker died on all {retries + 1} attempt(s) ({line})"


def train_members_ray(pending: list[TrainConfig], results_dir: Path, settings: RaySettings, *,
                      committed: int = 0, address: str | None = None, threads: int | None = None,
                      say: Callable[[str], None]) -> list[str]:
    """Train the members ``pending`` as Ray tasks, writing each one's small outputs into
    ``results_dir/members/<name>`` as it finishes; returns the names that failed. Joins
    ``address`` (``auto``: the running cluster), else uses the Ray already initialised in this
    process, else starts a local one with this machine's cores. ``committed`` (members already
    finished) and ``say`` (one progress line) are for the messages. ``ferens.study.pipeline`` calls
    it; this module never imports the study driver."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"include_dashboard": False} if address is None else {}
        try:
            ray.init(address=address or "local", **kwargs)
        except ConnectionError as exc:
            raise FerensError(f"--address {address}: cannot join a Ray cluster ({exc})") from None
    try:
        return _run_tasks(ray, results_dir, pending, committed, settings, threads, say)
    finally:
        if started_here:
            ray.shutdown()


def _run_tasks(ray, results_dir: Path, pending: list[TrainConfig], committed: int,
               settings: RaySettings, threads: int | None, say: Callable[[str], None]
               ) -> list[str]:
    cpus, gpus = _largest_node(ray)
    remote = ray.remote(max_calls=1)(run_member)  # a fresh process per member, as locally
    failed, refs = [], {}
    for cfg in pending:
        task = task_config(cfg, threads, settings.checkpoint_root, (cpus, gpus))
        need = member_resources(task, gpus)
        if need["num_cpus"] > cpus or need["num_gpus"] > gpus:
            failed.append(cfg.name)
            say(f"FAILED {cfg.name}: needs {need['num_cpus']} CPU(s) and {need['num_gpus']} "
                f"GPU(s); the largest Ray node has {cpus:g} CPU(s) and {gpus:g} GPU(s)")
            continue
        ref = remote.options(name=f"ferens-member:{cfg.name}", max_retries=settings.max_retries,
                             **need).remote(task.to_dict())
        refs[ref] = cfg
    total = ray.cluster_resources()
    say(f"{committed} finished, {len(refs)} to train as Ray tasks on "
        f"{total.get('CPU', 0):g} CPU(s) and {total.get('GPU', 0):g} GPU(s) "
        f"(max_retries {settings.max_retries}; runs under "
        f"{settings.checkpoint_root or '<out_dir>'}/<name> on the workers)")
    waiting = list(refs)
    try:
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            for ref in ready:
                cfg = refs[ref]
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    failed.append(cfg.name)
                    say(f"FAILED {cfg.name}: {_failure(ray, exc, settings.max_retries)}")
                    continue
                dest = write_member_outputs(results_dir, cfg.name, result["outputs"])
                summary = read_json(dest / "summary.json")
                resumed = result["resumed_after_epoch"]
                say(f"finished {cfg.name} on {result['node']}"
                    + (f" (resumed after epoch {resumed})" if resumed else "")
                    + f": test accuracy {summary['test']['accuracy']:.4f}, "
                      f"{summary['train_minutes']:.1f} train min")
    except KeyboardInterrupt:
        for ref in waiting:
            ray.cancel(ref, force=True)
        say("interrupted; run the same command again to resume")
        raise
    return failed
