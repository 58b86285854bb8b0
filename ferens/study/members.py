"""Which of a study's members are finished, committed or still to train, and copying each
finished member's small outputs into the study's results (both backends use these).
"""

from __future__ import annotations

from pathlib import Path

from ferens.config import TrainConfig, config_differences
from ferens.errors import FerensError
from ferens.io import read_json
from ferens.runs import member_outputs, store_member
from ferens.study.spec import Study


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
