"""What a run is, from its config.json: its kind and the recipe fields that define it.

A recipe leaves out bookkeeping (where files were, how many threads, which device) and numbers
fitted from data (an adjusted run's chosen tau and log prior), so two runs with the same recipe
differ only by chance. A member config written before a field existed gets the value it ran
with, from `ferens.config.saved_defaults` (the rule `TrainConfig.load` applies; ferens.config
imports no torch).
"""

from __future__ import annotations

import json
from pathlib import Path

from ferens.config import saved_defaults

KINDS = ("member", "ensemble", "adjusted")
BOOKKEEPING = frozenset({
    "name", "kind", "out_dir", "data", "ferplus", "threads", "workers", "device", "compile",
    "channels_last", "ferens_version",
})
# Ensembles and adjusted runs record their label set since issue 15; older ones used FER2013's.
LATER_COMBINED_DEFAULTS = {"labels": "fer2013"}
PATH_FIELDS = ("source", "teacher", "init")


def run_kind(config: dict, summary: dict | None = None) -> str:
    """member, ensemble or adjusted (a config without a kind is a member's)."""
    kind = config.get("kind") or (summary or {}).get("kind") or "member"
    return str(kind)


def recipe(config: dict, summary: dict | None = None) -> dict:
    """The config as flat ``field -> value`` pairs (nested keys joined by dots), bookkeeping out.

    Values are made hashable: lists become tuples, an ensemble's members become their names.
    """
    kind = run_kind(config, summary)
    values = {k: v for k, v in config.items() if k not in BOOKKEEPING}
    later = saved_defaults() if kind == "member" else LATER_COMBINED_DEFAULTS
    values.update({k: v for k, v in later.items() if k not in values and k not in BOOKKEEPING})
    if kind == "adjusted":
        values.pop("log_prior", None)
        if values.get("select") != "fixed":
            values.pop("tau", None)
    if isinstance(values.get("members"), list):
        values["members"] = tuple(sorted(_member_name(m) for m in values["members"]))
    for key in PATH_FIELDS:
        if isinstance(values.get(key), str):
            values[key] = Path(values[key]).name
    flat = {"kind": kind}
    _flatten(values, "", flat)
    return flat


def show(value) -> str:
    """A recipe value as a short label for tables and headings."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return f"{len(value)} runs" if len(value) > 3 else ", ".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _member_name(member) -> str:
    return str(member.get("name")) if isinstance(member, dict) else Path(str(member)).name


def _flatten(values: dict, prefix: str, out: dict) -> None:
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            _flatten(value, f"{name}.", out)
        else:
            out[name] = _hashable(value)


def _hashable(value):
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value
