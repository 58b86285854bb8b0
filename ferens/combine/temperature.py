"""Per-member temperature scaling (Guo et al., 2017), fitted on val like a combiner.

    >>> scaler = TemperatureScaler().fit(val_logits, val_labels)     # doctest: +SKIP
    >>> test_log_probs = scaler.transform(test_logits)               # doctest: +SKIP

``temperatures_`` holds one T per member; ``transform`` divides each member's logits by its T
and takes the log-softmax. Labels are only ever passed to ``fit``.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from ferens.combine.combiners import check_labels, check_log_probs, nll
from ferens.errors import FerensError

TEMPERATURE_BOUNDS = (0.05, 20.0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Scalar T minimising val NLL of softmax(logits / T), searched on log T within bounds."""
    logits = np.asarray(logits, dtype=np.float64)
    lo, hi = np.log(TEMPERATURE_BOUNDS)
    res = minimize_scalar(lambda t: nll(log_softmax(logits / np.exp(t), axis=1), labels),
                          bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


class TemperatureScaler:
    """One temperature per member, each minimising that member's NLL on the fitted split."""

    def fit(self, member_logits, labels) -> TemperatureScaler:
        arrays = check_log_probs(member_logits)
        y = check_labels(labels, len(arrays[0]), arrays[0].shape[1])
        self.temperatures_ = np.array([fit_temperature(x, y) for x in arrays])
        self.val_nll_before_ = [nll(log_softmax(x, axis=1), y) for x in arrays]
        self.val_nll_after_ = [nll(lp, y) for lp in self.transform(arrays)]
        return self

    def transform(self, member_logits) -> list[np.ndarray]:
        """Each member's log-softmax(logits / T); no labels."""
        if not hasattr(self, "temperatures_"):
            raise FerensError("the temperature scaler is not fitted; call fit first")
        arrays = check_log_probs(member_logits, len(self.temperatures_))
        return [log_softmax(x / t, axis=1) for x, t in zip(arrays, self.temperatures_,
                                                           strict=True)]

    def to_dict(self) -> dict:
        return {"temperatures_": self.temperatures_.tolist(),
                "val_nll_before_": list(getattr(self, "val_nll_before_", [])),
                "val_nll_after_": list(getattr(self, "val_nll_after_", []))}

    @classmethod
    def from_dict(cls, data: dict) -> TemperatureScaler:
        out = cls()
        try:
            out.temperatures_ = np.asarray(data["temperatures_"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise FerensError(f"saved temperature scaler lacks {exc}") from None
        if out.temperatures_.ndim != 1 or not (out.temperatures_ > 0).all():
            raise FerensError("saved temperatures must be one positive number per member")
        out.val_nll_before_ = list(data.get("val_nll_before_", []))
        out.val_nll_after_ = list(data.get("val_nll_after_", []))
        return out

    def report(self, names: list[str]) -> dict[str, dict]:
        """summary.json's ``temperatures``: each member's T and val NLL before and after."""
        return {n: {"T": float(t), "val_nll_before": b, "val_nll_after": a}
                for n, t, b, a in zip(names, self.temperatures_, self.val_nll_before_,
                                      self.val_nll_after_, strict=True)}

    @classmethod
    def from_report(cls, temps: dict, names: list[str]) -> TemperatureScaler:
        """The scaler an older summary.json's ``temperatures`` describes."""
        if set(temps) != set(names):
            raise FerensError("temperatures do not list every member")
        return cls.from_dict({
            "temperatures_": [float(temps[n]["T"]) for n in names],
            "val_nll_before_": [temps[n].get("val_nll_before") for n in names],
            "val_nll_after_": [temps[n].get("val_nll_after") for n in names]})
