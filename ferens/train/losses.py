"""One loss for every imbalance strategy: class-weighted, focal and label-smoothed cross-entropy."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.nn import functional as F

from ferens.errors import FerensError


def _positive_counts(counts: np.ndarray) -> np.ndarray:
    """Class counts as floats; a class without training examples cannot be weighted."""
    counts = np.asarray(counts, dtype=np.float64)
    if (counts <= 0).any():
        raise FerensError(f"every class needs training examples; counts are {counts.tolist()}")
    return counts


def inverse_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """w_c = N / (K * n_c): each class contributes equally to the loss (scikit-learn's
    ``compute_class_weight("balanced")`` of labels with these counts)."""
    counts = _positive_counts(counts)
    classes = np.arange(len(counts))
    return compute_class_weight("balanced", classes=classes,
                                y=np.repeat(classes, counts.astype(np.int64)))


def effective_number_weights(counts: np.ndarray, beta: float = 0.999) -> np.ndarray:
    """Cui et al. 2019: w_c proportional to (1 - beta) / (1 - beta^n_c), normalised to sum to K."""
    counts = _positive_counts(counts)
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return weights * len(counts) / weights.sum()


def class_weights(counts: np.ndarray, scheme: str, beta: float = 0.999) -> np.ndarray | None:
    """``none``, ``inverse`` or ``effective`` class weights from training class counts."""
    if scheme == "none":
        return None
    if scheme == "inverse":
        return inverse_frequency_weights(counts)
    if scheme == "effective":
        return effective_number_weights(counts, beta)
    raise FerensError(f"unknown class-weight scheme {scheme!r}; use none, inverse or effective")


class FocalCrossEntropy(nn.Module):
    """-sum_i sum_c q_ic w_c (1 - p_ic)^gamma log p_ic / sum_i sum_c t_ic w_c.

    t is the target: class indices (one-hot) or class distributions (mixed, FER+ soft); q is t
    label-smoothed; w the class weights (or focal alpha), all ones without. One normalisation
    for every case: the weighted mean over the targets' weights, which is the batch size
    without class weights (target rows sum to 1). So a one-hot soft target gives exactly the
    hard label's loss, with or without weights, and with gamma = 0 the loss is
    ``F.cross_entropy(weight=w, label_smoothing=s)`` for hard targets and for soft ones without
    weights. (torch itself averages weighted soft targets over the batch size instead, which
    would make a weighted loss depend on whether the labels came as indices or one-hot rows.)
    """

    def __init__(self, weight: torch.Tensor | None = None, gamma: float = 0.0,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight if weight is None else weight.float())
        self.gamma = gamma
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``target`` is class indices (N,) or class distributions (N,K) (mixed or soft)."""
        soft = target.is_floating_point()
        if self.gamma == 0 and (not soft or self.weight is None):
            # torch normalises these cases exactly as documented above
            return F.cross_entropy(logits, target, weight=self.weight,
                                   label_smoothing=self.label_smoothing)
        num_classes = logits.shape[1]
        log_p = F.log_softmax(logits.float(), dim=1)
        t = target.float() if soft else F.one_hot(target, num_classes).float()
        w = self.weight if self.weight is not None else log_p.new_ones(num_classes)
        norm = (t * w).sum()
        q = t * (1 - self.label_smoothing) + self.label_smoothing / num_classes
        per_class = -q * w * (1 - log_p.exp()).pow(self.gamma) * log_p
        return per_class.sum() / norm


def distillation_loss(logits: torch.Tensor, teacher_probs: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): T^2 * KL(teacher_T || student_T), averaged over the batch.
    ``teacher_probs`` are already softened with the same temperature."""
    log_student = F.log_softmax(logits.float() / temperature, dim=1)
    kl = F.kl_div(log_student, teacher_probs, reduction="batchmean")
    return kl * temperature**2


def build_loss(imbalance: str, counts: np.ndarray, *, weight_scheme: str = "inverse",
               beta: float = 0.999, focal_gamma: float = 2.0, focal_alpha: str = "none",
               label_smoothing: float = 0.0) -> FocalCrossEntropy:
    """The training loss for an imbalance strategy (``oversample`` uses plain CE)."""
    if imbalance in ("none", "oversample"):
        weights, gamma = None, 0.0
    elif imbalance == "weighted":
        weights, gamma = class_weights(counts, weight_scheme, beta), 0.0
    elif imbalance == "focal":
        weights, gamma = class_weights(counts, focal_alpha, beta), focal_gamma
    else:
        raise FerensError(f"unknown imbalance strategy {imbalance!r}")
    tensor = None if weights is None else torch.tensor(weights, dtype=torch.float32)
    return FocalCrossEntropy(tensor, gamma=gamma, label_smoothing=label_smoothing)
