"""A whole study from one TOML file: members (side by side, resumable), ensembles, report.

    ferens study experiments/study.toml            # trains what is missing, then combines
    ferens study experiments/study.toml --lanes 1  # one member at a time on every core
    ferens study experiments/study.toml --only strong-e25  # reproduce one member

The study file is read by ``ferens.study.spec``. Members train side by side on this machine
(``ferens.study.local``: lanes, resuming, stopping with the study, ``$FERENS_DEADLINE``) or as
Ray tasks; each finished member's small outputs are copied to ``results_dir/members/<name>`` at
once (``ferens.study.members``), so nothing finished is lost when a session ends. A member a
deadline stopped is collected with ``stopped_by_deadline`` in its summary, kept out of the
ensembles, and trained on by the next run. Then every ensemble method runs over all members
(and over each ``[[ensembles]]`` group: a named subset such as one recipe's seeds), the runs
named in ``adjust`` get a ``ferens adjust`` logit adjustment (into ``results_dir/adjusted``),
and one report covers them all.

``backend="ray"`` (``ferens study FILE --backend ray``) trains the members as Ray tasks
instead, on this machine or a cluster: see ``ferens.study.ray_backend``.
"""

from __future__ import annotations

from pathlib import Path

from ferens.config import RANGES
from ferens.errors import FerensError
from ferens.io import read_json
from ferens.study.local import say, train_members
from ferens.study.members import (
    check_trainable_members,
    collect_finished,
    pending_members,
    stopped_by_deadline,
)
from ferens.study.spec import Study, load_study

BACKENDS = ("local", "ray")


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
            say(f"not ensembling {m.name}: a deadline stopped its training early")
        else:
            say(f"not ensembling {m.name}: trained with --labels ferplus, so it is scored on "
                "FER+ labels (val and test relabelled and filtered)")
    # (folder prefix, runs, methods): every member first, then each complete group
    jobs = [("", combinable, study.ensemble_methods)] if len(combinable) >= 2 else []
    by_name = {m.name: m for m in combinable}
    for group in study.groups:
        missing = [n for n in group.members if n not in by_name]
        if missing:
            say(f"not building ensembles {group.name}: {missing} not finished (or not scored "
                "on FER2013 labels)")
            continue
        jobs.append((f"{group.name}-", [by_name[n] for n in group.members], group.methods))
    ensembles = []
    for prefix, runs, methods in jobs:
        for method in methods:
            out = study.results_dir / "ensembles" / f"{prefix}{method}"
            build_ensemble(runs, method=method, out=out)
            ensembles.append(out)
            say(f"ensemble {out.name}: test accuracy "
                f"{read_json(out / 'summary.json')['test']['accuracy']:.4f}")
    adjusted = []
    for name in study.adjust:
        source = next((p for p in [study.results_dir / "members" / name, *ensembles]
                       if p.name == name and (p / "summary.json").is_file()), None)
        if source is None:
            say(f"not adjusting {name}: it has not finished")
            continue
        out = study.results_dir / "adjusted" / f"{name}-adjusted"
        adjust_run(source, out, select=study.adjust_select,
                   max_accuracy_loss=study.adjust_max_accuracy_loss)
        adjusted.append(out)
        say(f"adjusted {name}: test accuracy "
            f"{read_json(out / 'summary.json')['test']['accuracy']:.4f}")
    ferplus = study.ferplus if study.ferplus and Path(study.ferplus).is_file() else None
    report_dir = study.results_dir / "report"
    write_report(members + ensembles + adjusted, out=report_dir, ferplus=ferplus, data=study.data)
    say(f"report: {report_dir / 'report.html'}")
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
            committed=len(committed), address=address, threads=threads, say=say)
    elif train:
        check_trainable_members(study, only)
        failed = train_members(study, lanes, only=only, threads=threads)
    else:
        failed = []
        say(f"collected finished members: {collect_finished(study)}")
    outcome = combine_and_report(study)
    outcome["failed"] = failed
    return outcome
