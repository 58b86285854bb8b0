"""The study file: ``[study]``, ``[defaults]``, ``[[members]]``, ``[[ensembles]]`` and ``[ray]``
tables read and checked into a typed ``Study`` (member configs as ``TrainConfig``s).

Torch-free: ``ferens study FILE --no-train`` and the committed-results test read studies.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ferens.combine.adjust import SELECT
from ferens.combine.ensemble import METHODS as ALL_METHODS
from ferens.config import NAME_PATTERN, TrainConfig, read_text
from ferens.errors import FerensError

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
