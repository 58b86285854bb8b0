"""McNemar's exact test on paired per-row correctness, with Benjamini-Hochberg q-values."""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest, false_discovery_control

ALPHA = 0.05


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict:
    """Two-sided binomial test on the rows where exactly one of two runs is right."""
    a_only = int((a & ~b).sum())
    b_only = int((~a & b).sum())
    discordant = a_only + b_only
    p = binomtest(a_only, discordant, 0.5).pvalue if discordant else 1.0
    return {"a_right_b_wrong": a_only, "a_wrong_b_right": b_only,
            "accuracy_diff": float(a.mean() - b.mean()) if len(a) else float("nan"),
            "p_value": float(p)}


def add_q_values(tests: list[dict], alpha: float = ALPHA) -> list[dict]:
    """Benjamini-Hochberg adjusted p (q) over `tests`, and whether each q is below `alpha`."""
    if tests:
        q = np.atleast_1d(false_discovery_control([t["p_value"] for t in tests]))
        for t, qv in zip(tests, q, strict=True):
            t["q_value"] = float(qv)
            t["significant"] = bool(qv < alpha)
    return tests


def against_reference(correct: np.ndarray, reference: int,
                      alpha: float = ALPHA) -> list[dict | None]:
    """Each row of `correct` (runs x rows) tested against run `reference`; q over that family.

    The entry of the reference itself is None; `accuracy_diff` is run minus reference.
    """
    tests: list[dict | None] = [None if i == reference else mcnemar(row, correct[reference])
                                for i, row in enumerate(correct)]
    add_q_values([t for t in tests if t is not None], alpha)
    return tests
