"""fitted.json: what an ensemble or adjusted run fitted on val, in its own file.

``ferens ensemble`` and ``ferens adjust`` write ``fitted.json`` next to ``summary.json`` (and
name it in config.json's ``"fitted"``); everything that applies a fitted run to other
predictions (the exporter, an ensemble's Training-split predictions for distillation) reads it
through `load_fitted`. Runs written before it existed (the ensembles committed under
results/) keep their parameters in summary.json (``details``, ``temperatures``) or, for
adjusted runs, config.json: `load_fitted` falls back to those when config.json does not name
fitted.json. A run whose config names fitted.json but lacks the file is refused, not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ferens.combine.adjust import LogitAdjuster
from ferens.combine.combiners import (
    FITTED_FILE,
    FITTED_FORMAT,
    Combiner,
    GreedyCombiner,
    LogitMeanCombiner,
    MeanCombiner,
    WeightedCombiner,
    check_method,
)
from ferens.combine.stack import StackCombiner
from ferens.combine.temperature import TemperatureScaler
from ferens.errors import FerensError
from ferens.io import read_json

__all__ = ["FITTED_FILE", "FittedEnsemble", "combiner_from_dict", "load_fitted", "make_combiner"]
COMBINERS: dict[str, type[Combiner]] = {c.method: c for c in (
    MeanCombiner, LogitMeanCombiner, WeightedCombiner, GreedyCombiner, StackCombiner)}


def make_combiner(method: str, seed: int = 0, greedy_metric: str = "accuracy",
                  stack_c: float | None = None) -> Combiner:
    """An unfitted combiner for `method` with the options ``ferens ensemble`` takes."""
    check_method(method)
    cls = COMBINERS[method]
    if method == "greedy":
        return cls(metric=greedy_metric)
    if method == "stack":
        return cls(seed=seed, C=stack_c)
    return cls()


def combiner_from_dict(data: dict) -> Combiner:
    """A fitted combiner from `Combiner.to_dict` output (as saved in fitted.json)."""
    method = data.get("method") if isinstance(data, dict) else None
    check_method(method)
    return COMBINERS[method].from_dict(data)


def from_summary(method: str, details: dict, names: list[str]) -> Combiner:
    """A fitted combiner from a summary.json written before fitted.json existed (its
    ``details``), for the ensembles committed under results/."""
    check_method(method)
    n = len(names)
    if method == "stack":
        if "stacker" not in details:
            raise FerensError("details hold no fitted stacker (written by an older ferens); "
                              "rebuild the ensemble with `ferens ensemble`")
        return StackCombiner.from_stacker(details["stacker"], n)
    out = COMBINERS[method]()
    out.n_members_, out.n_classes_ = n, None
    if method == "mean":
        out.weights_ = np.full(n, 1.0 / n)
    key = {"weighted": "weights", "greedy": "counts"}.get(method)
    if key:
        if set(details.get(key, {})) != set(names):
            raise FerensError(f"details.{key} does not list every member")
        out.weights_ = np.array([float(details[key][m]) for m in names])
    if method == "greedy":
        out.metric = details.get("metric", "accuracy")
        out.picks_ = [names.index(p) for p in details.get("picks", []) if p in names]
    return out


def to_params(combiner: Combiner) -> dict:
    """A fitted combiner in a bundle manifest's node format: ``{"weights": [...]}`` (mean,
    weighted, greedy), ``{"stacker": {...}}`` (stack) or ``{}`` (logit-mean)."""
    if isinstance(combiner, StackCombiner):
        return {"stacker": combiner.stacker()}
    if isinstance(combiner, MeanCombiner):
        return {"weights": [float(w) for w in combiner.weights_]}
    return {}


def from_params(method: str, params: dict, n_members: int) -> Combiner:
    """The fitted combiner a `to_params` table describes, for `n_members` members."""
    check_method(method)
    if method == "stack":
        return StackCombiner.from_stacker(params["stacker"], n_members)
    out = COMBINERS[method]()
    out.n_members_, out.n_classes_ = n_members, None
    if isinstance(out, MeanCombiner):
        out.weights_ = np.asarray(params["weights"], dtype=np.float64)
        if out.weights_.shape != (n_members,) or not (out.weights_ >= 0).all() or not (
                out.weights_ > 0).any():
            raise FerensError(f"weights {params['weights']!r}: expected {n_members} "
                              "non-negative numbers, not all 0")
        out.picks_ = []
    return out


@dataclass
class FittedEnsemble:
    """An ensemble's fitted state: member names, optional temperatures, the combiner."""

    members: list[str]
    combiner: Combiner
    temperature: TemperatureScaler | None = None

    def predict_log_proba(self, member_logits: list[np.ndarray]) -> np.ndarray:
        """The ensemble's log-probabilities from its members' saved logits, in member order."""
        if self.temperature is not None:
            log_probs = self.temperature.transform(member_logits)
        else:
            from scipy.special import log_softmax

            log_probs = [log_softmax(np.asarray(x, np.float64), axis=1) for x in member_logits]
        return self.combiner.predict_log_proba(log_probs)

    def to_dict(self) -> dict:
        return {"format": FITTED_FORMAT, "kind": "ensemble", "members": list(self.members),
                "temperature": None if self.temperature is None else self.temperature.to_dict(),
                "combiner": self.combiner.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> FittedEnsemble:
        if data.get("kind") != "ensemble" or not isinstance(data.get("members"), list):
            raise FerensError("not a fitted ensemble")
        temp = data.get("temperature")
        out = cls(list(data["members"]), combiner_from_dict(data.get("combiner")),
                  None if temp is None else TemperatureScaler.from_dict(temp))
        if out.combiner.n_members_ != len(out.members) or (
                out.temperature is not None
                and len(out.temperature.temperatures_) != len(out.members)):
            raise FerensError("the combiner, temperatures and member list disagree in length")
        return out


def load_fitted(run_dir: str | Path) -> FittedEnsemble | LogitAdjuster:
    """The fitted state of an ensemble or adjusted run folder: from fitted.json, or for runs
    older than fitted.json from summary.json / config.json. One FerensError naming the file
    on anything missing or damaged."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json")
    kind = config.get("kind")
    if kind not in ("ensemble", "adjusted"):
        raise FerensError(f"{run_dir}: not an ensemble or adjusted run (kind {kind!r}); "
                          "nothing was fitted")
    path = run_dir / FITTED_FILE
    if "fitted" in config:
        if not path.is_file():
            raise FerensError(f"{path}: file not found; this run's fitted parameters are "
                              "there (config.json names it): rebuild the run")
        data = read_json(path)
        try:
            if data.get("kind") != kind:
                raise FerensError(f"holds a {data.get('kind')!r} fit, not an {kind!r} one")
            if kind == "adjusted":
                return LogitAdjuster.from_dict(data.get("adjuster"))
            return FittedEnsemble.from_dict(data)
        except (FerensError, AttributeError, TypeError, ValueError) as exc:
            raise FerensError(f"{path}: damaged ({str(exc)[:200]})") from None
    if kind == "adjusted":
        try:
            return LogitAdjuster.from_config(config)
        except FerensError as exc:
            raise FerensError(f"{run_dir}/config.json: {exc}") from None
    return _from_summary(run_dir, config)


def _from_summary(run_dir: Path, config: dict) -> FittedEnsemble:
    """An older ensemble's fit, from the summary.json it kept it in."""
    summary = read_json(run_dir / "summary.json")
    try:
        names = [m["name"] for m in config["members"]]
        combiner = from_summary(config["method"], summary.get("details") or {}, names)
        temps = summary.get("temperatures")
        temperature = TemperatureScaler.from_report(temps, names) if temps else None
    except (FerensError, KeyError, TypeError, ValueError) as exc:
        raise FerensError(f"{run_dir}/summary.json: {exc}") from None
    return FittedEnsemble(names, combiner, temperature)
