"""Mixup and CutMix of a training batch, seeded per batch so a resumed run mixes identically.

    x, (q,) = mix_batch(x, [q], seed, cfg)   # q: (B, 7) target distributions

A batch is mixed with probability ``mix_prob``; with both alphas set, mixup or CutMix is
chosen 50/50. Each image is paired with the batch reversed (as timm's ``Mixup`` does), the
mixing weight lambda ~ Beta(alpha, alpha), and for CutMix lambda is corrected to the pasted
box's area. Every target given (labels, FER+ soft targets, teacher probabilities) is mixed
with the same lambda. timm's ``Mixup`` draws from the global random state, which would make
the result depend on what else consumed it; this draws from a generator seeded by
``(seed, epoch, the batch's first sample index)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ferens.config import TrainConfig


def mixing_enabled(cfg: TrainConfig) -> bool:
    return (cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0) and cfg.mix_prob > 0


def mix_batch(x: torch.Tensor, targets: list[torch.Tensor], seed: int,
              cfg: TrainConfig) -> tuple[torch.Tensor, list[torch.Tensor], float]:
    """(mixed images, mixed targets, lambda); lambda 1.0 means the batch was left alone."""
    rng = np.random.default_rng(seed)
    if not mixing_enabled(cfg) or rng.random() >= cfg.mix_prob:
        return x, targets, 1.0
    cutmix = cfg.cutmix_alpha > 0 and (cfg.mixup_alpha <= 0 or rng.random() < 0.5)
    alpha = cfg.cutmix_alpha if cutmix else cfg.mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    partner = x.flip(0)
    if cutmix:
        h, w = x.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = x * lam + partner * (1.0 - lam)
    return x, [t * lam + t.flip(0) * (1.0 - lam) for t in targets], lam
