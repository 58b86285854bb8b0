"""Study axes found from the runs' recipes: runs that differ in exactly one field form a group.

Seed is set aside when grouping: runs that differ only in ``seed`` form a seed group (shown as
mean, sd and range), and in a group on another field, the seed replicates of one value are
pooled. ``forced`` fields make a group over every run that has the field, whatever else
differs (the fields that also vary are listed, so the reader knows it is not controlled).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ferens.errors import FerensError
from ferens.report.recipes import show

SEED = "seed"
# Fields that name what a run was built from rather than how: an adjusted run's source model.
# Runs differing there are simply different models; `--group source` still compares them.
NOT_AXES = ("kind", "source")


@dataclass
class Group:
    """Runs (indices into the report's run list) compared on one recipe field."""

    field: str
    kind: str                    # "seed", "field" or "forced"
    runs: list[int]
    values: list                 # the field's value for each run, in `runs` order
    context: dict = field(default_factory=dict)   # shared values that tell same-field groups apart
    varying: list[str] = field(default_factory=list)  # other fields that vary (forced groups)

    def title(self) -> str:
        where = ", ".join(f"{k}={show(v)}" for k, v in self.context.items())
        if self.kind == "seed":
            return f"seed ({len(self.runs)} seeds{', ' + where if where else ''})"
        distinct = list(dict.fromkeys(show(v) for v in self.values))
        return f"{self.field}: {', '.join(distinct)}" + (f" ({where})" if where else "")


def find_groups(recipes: list[dict], forced: list[str] | tuple[str, ...] = ()) -> list[Group]:
    """Forced groups first, then seed groups, then one group per (field, shared recipe)."""
    fields = list(dict.fromkeys(k for r in recipes for k in r))
    full = [{k: r.get(k) for k in fields} for r in recipes]
    groups = [_forced(recipes, full, f) for f in dict.fromkeys(forced)]
    groups += _with_context(_partition(full, SEED, "seed"), full)
    by_field = []
    for f in fields:
        if f != SEED and f not in NOT_AXES and f not in forced:
            by_field += _with_context(_partition(full, f, "field"), full)
    return groups + by_field


def _partition(full: list[dict], f: str, kind: str) -> list[Group]:
    classes: dict[tuple, list[int]] = {}
    for i, r in enumerate(full):
        key = tuple((k, v) for k, v in r.items() if k not in (f, SEED))
        classes.setdefault(key, []).append(i)
    groups = []
    for members in classes.values():
        values = [full[i].get(f) for i in members]
        if len(set(values)) > 1:
            order = _order(values)
            groups.append(Group(f, kind, [members[j] for j in order], [values[j] for j in order]))
    return groups


def _order(values: list) -> list[int]:
    """Positions sorted by value: numbers ascending, other values by first appearance."""
    distinct = list(dict.fromkeys(values))
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in distinct):
        distinct.sort()
    rank = {v: r for r, v in enumerate(distinct)}
    return sorted(range(len(values)), key=lambda j: (rank[values[j]], j))


def _with_context(groups: list[Group], full: list[dict]) -> list[Group]:
    """For several groups on one field, the shared values that differ between them."""
    if len(groups) < 2:
        return groups
    shared = [_shared(full, g) for g in groups]
    keys = [k for k in shared[0]
            if k != SEED and len({s.get(k) for s in shared}) > 1]
    for g, s in zip(groups, shared, strict=True):
        g.context = {k: s.get(k) for k in keys[:3]}
    return groups


def _shared(full: list[dict], group: Group) -> dict:
    first = full[group.runs[0]]
    return {k: v for k, v in first.items()
            if k != group.field and all(full[i][k] == v for i in group.runs)}


def _forced(recipes: list[dict], full: list[dict], f: str) -> Group:
    members = [i for i, r in enumerate(recipes) if f in r]
    if not members:
        known = sorted({k for r in recipes for k in r})
        raise FerensError(f"--group {f}: no run's config has this field; fields: "
                          + ", ".join(known))
    values = [full[i][f] for i in members]
    if len(set(values)) < 2:
        raise FerensError(f"--group {f}: every run has {f}={show(values[0])}; "
                          "nothing to compare")
    order = _order(values)
    runs, values = [members[j] for j in order], [values[j] for j in order]
    varying = [k for k in full[0] if k not in (f, SEED)
               and len({full[i][k] for i in runs}) > 1]
    return Group(f, "forced", runs, values, varying=varying)


def seed_ensemble(group: Group, recipes: list[dict], raw_names: list[str]) -> int | None:
    """Index of an ensemble whose members are exactly the runs of a seed group, if any."""
    wanted = tuple(sorted(raw_names[i] for i in group.runs))
    for i, r in enumerate(recipes):
        if r.get("kind") == "ensemble" and r.get("members") == wanted:
            return i
    return None
