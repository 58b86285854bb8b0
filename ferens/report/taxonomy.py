"""Error taxonomy: confused pairs, confident and ambiguous errors, run comparison, FER+ classes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ferens.errors import FerensError
from ferens.report.significance import ALPHA, add_q_values, mcnemar
from ferens.runs import Predictions, row_positions

FERPLUS_CATEGORIES = ("label_noise", "genuine_error", "ambiguous", "not_a_face_unknown", "other")
FERPLUS_RULES = (
    "Each error is classed by the FER+ votes (10 annotators) for its image, first rule wins: "
    "ambiguous = no single class has the most votes, or the top class has under 50% of them; "
    "not_a_face_unknown = the most votes went to 'not a face' or 'unknown'; "
    "label_noise = the FER+ majority equals the model's prediction; genuine_error = the FER+ "
    "majority equals the FER2013 label; other = the FER+ majority is a third class "
    "(including contempt, which FER2013 lacks)."
)
CLEAR_SHARE = 0.5


@dataclass
class FerPlusReference:
    """FER+ majority label (-1 when not one of the 7), its kind and top-vote share, by row id;
    ``usage`` is FER+'s own Usage column, when the votes have one."""

    labels: np.ndarray
    kind: np.ndarray
    share: np.ndarray
    usage: np.ndarray | None = None

    @classmethod
    def from_votes(cls, votes: pd.DataFrame) -> FerPlusReference:
        """Build from `ferens.data.fer2013.read_ferplus_votes` output (index = row id)."""
        from ferens.data.fer2013 import FERPLUS_VOTES, ferplus_majority

        labels, kind = ferplus_majority(votes)
        counts = votes[list(FERPLUS_VOTES)].to_numpy(dtype=np.float64)
        totals = counts.sum(axis=1)
        share = np.divide(counts.max(axis=1), totals, out=np.zeros(len(totals)),
                          where=totals > 0)
        usage = (votes["Usage"].astype(str).str.strip().to_numpy()
                 if "Usage" in votes.columns else None)
        return cls(np.asarray(labels), np.asarray(kind).astype(str), share, usage)

    def take(self, row_ids: np.ndarray) -> FerPlusReference:
        if len(row_ids) and (row_ids.min() < 0 or row_ids.max() >= len(self.labels)):
            raise FerensError(f"FER+ votes cover rows 0..{len(self.labels) - 1} but the "
                              f"predictions have row id {int(row_ids.max())}")
        return FerPlusReference(self.labels[row_ids], self.kind[row_ids], self.share[row_ids],
                                None if self.usage is None else self.usage[row_ids])

    def check_split(self, row_ids: np.ndarray, split: str, where: str) -> None:
        """Votes join by fer2013.csv row: refuse predictions of ``split`` whose rows are
        another split in FER+ (row ids that are not CSV rows, e.g. an image folder's)."""
        from ferens.data.dataset import SPLIT_TO_USAGE

        if self.usage is None:
            return
        usage = self.take(row_ids).usage
        wrong = np.flatnonzero(usage != SPLIT_TO_USAGE[split])
        if len(wrong):
            i = wrong[0]
            raise FerensError(f"{where}: row {int(row_ids[i])} is {usage[i]!r} in FER+ but the "
                              f"{split} split ({SPLIT_TO_USAGE[split]}) here ({len(wrong)} rows "
                              "differ); FER+ joins by fer2013.csv row, so these predictions' "
                              "row ids are not fer2013.csv rows (an image folder's?)")


def confused_pairs(cm: np.ndarray, class_names: tuple[str, ...], top: int = 6) -> list[dict]:
    """The most frequent (true -> predicted) mistakes, with their share of the true class."""
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    rows = cm.sum(axis=1)
    pairs = []
    for flat in order:
        t, p = divmod(int(flat), cm.shape[1])
        if off[t, p] == 0:
            break
        pairs.append({"true": class_names[t], "pred": class_names[p], "true_index": t,
                      "pred_index": p, "count": int(off[t, p]),
                      "share_of_true": float(off[t, p] / rows[t])})
    return pairs


def pair_examples(preds: Predictions, true: int, pred: int, n: int = 6) -> np.ndarray:
    """Row ids of the most confident mistakes of one confused pair."""
    probs = preds.probs
    rows = np.flatnonzero((preds.labels == true) & (preds.predicted == pred))
    order = np.argsort(-probs[rows, pred], kind="stable")[:n]
    return preds.row_ids[rows[order]]


def error_examples(preds: Predictions, kind: str, n: int = 12) -> list[dict]:
    """Wrong answers with the highest confidence ("confident") or smallest top-2 margin."""
    probs = preds.probs
    wrong = np.flatnonzero(preds.predicted != preds.labels)
    top2 = np.sort(probs[wrong], axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    if kind == "confident":
        order = np.argsort(-top2[:, 1], kind="stable")
    elif kind == "ambiguous":
        order = np.argsort(margin, kind="stable")
    else:
        raise ValueError(f"unknown error kind {kind!r}")
    names = preds.class_names
    out = []
    for i in order[:n]:
        row = wrong[i]
        y, p = int(preds.labels[row]), int(preds.predicted[row])
        out.append({"row_id": int(preds.row_ids[row]), "true": names[y], "pred": names[p],
                    "p_pred": float(probs[row, p]), "p_true": float(probs[row, y]),
                    "margin": float(margin[i]),
                    "probs": {c: float(v) for c, v in zip(names, probs[row], strict=True)}}
                   | ({} if preds.files is None else {"file": str(preds.files[row])}))
    return out


def common_rows(preds: list[Predictions]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Row ids present in every run with the same label, and each run's positions for them."""
    common = preds[0].row_ids
    for p in preds[1:]:
        common = np.intersect1d(common, p.row_ids)
    positions = [row_positions(p.row_ids, common) for p in preds]
    same = np.ones(len(common), dtype=bool)
    for p, pos in zip(preds[1:], positions[1:], strict=True):
        same &= p.labels[pos] == preds[0].labels[positions[0]]
    return common[same], [pos[same] for pos in positions]


def compare_runs(preds: list[Predictions], names: list[str]) -> dict:
    """Shared and unique errors, pairwise disagreement and McNemar's exact test for each pair."""
    row_ids, positions = common_rows(preds)
    y = preds[0].labels[positions[0]]
    predicted = np.stack([p.predicted[pos] for p, pos in zip(preds, positions, strict=True)])
    wrong = predicted != y[None, :]
    n_wrong = wrong.sum(axis=0)
    k = len(preds[0].class_names)
    all_wrong = n_wrong == len(preds)
    per_class = np.bincount(y[all_wrong], minlength=k).tolist()
    only_one = (wrong & (n_wrong == 1)).sum(axis=1).tolist()
    return {
        "n_common": int(len(row_ids)),
        "all_wrong": int(all_wrong.sum()),
        "all_wrong_per_class": dict(zip(preds[0].class_names, per_class, strict=True)),
        "all_right": int((n_wrong == 0).sum()),
        "oracle_accuracy": float(1 - all_wrong.mean()) if len(y) else float("nan"),
        "only_this_run_wrong": dict(zip(names, only_one, strict=True)),
        "disagreement": (predicted[:, None, :] != predicted[None, :, :]).mean(axis=2).tolist(),
        "mcnemar": mcnemar_pairs(~wrong, names),
    }


def mcnemar_pairs(correct: np.ndarray, names: list[str], alpha: float = ALPHA) -> list[dict]:
    """Exact McNemar test (binomial on discordant rows) per pair, with Benjamini-Hochberg q."""
    pairs = [{"a": names[a], "b": names[b], **mcnemar(correct[a], correct[b])}
             for a in range(len(names)) for b in range(a + 1, len(names))]
    return add_q_values(pairs, alpha)


def classify_errors(labels: np.ndarray, predicted: np.ndarray,
                    ref: FerPlusReference) -> np.ndarray:
    """FER+ category of each row ("correct" for right answers), by the rules in FERPLUS_RULES."""
    conditions = [
        predicted == labels,
        (ref.kind == "tie") | (ref.share < CLEAR_SHARE),
        np.isin(ref.kind, ["unknown", "not_a_face"]),
        ref.labels == predicted,
        ref.labels == labels,
    ]
    choices = ["correct", "ambiguous", "not_a_face_unknown", "label_noise", "genuine_error"]
    return np.select(conditions, choices, default="other")


def ferplus_analysis(preds: Predictions, reference: FerPlusReference) -> dict:
    """Error categories per true class and accuracy re-scored against FER+ majority labels."""
    ref = reference.take(preds.row_ids)
    y, p = preds.labels, preds.predicted
    category = classify_errors(y, p, ref)
    per_class = {}
    for k, name in enumerate(preds.class_names):
        in_class = category[y == k]
        per_class[name] = {c: int((in_class == c).sum()) for c in FERPLUS_CATEGORIES}
    total = {c: int((category == c).sum()) for c in FERPLUS_CATEGORIES}
    emotion = ref.labels >= 0
    return {
        "per_class": per_class,
        "total": total,
        "errors": int((category != "correct").sum()),
        "rescored": {
            "n": int(emotion.sum()),
            "accuracy_vs_ferplus": _mean(p[emotion] == ref.labels[emotion]),
            "accuracy_vs_fer2013_same_rows": _mean(p[emotion] == y[emotion]),
            "fer2013_label_agrees_with_ferplus": _mean(y[emotion] == ref.labels[emotion]),
        },
    }


def _mean(mask: np.ndarray) -> float:
    return float(mask.mean()) if len(mask) else float("nan")

