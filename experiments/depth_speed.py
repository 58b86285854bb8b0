"""Training step throughput (forward+backward+AdamW, batch 64, one thread) per ResNet variant.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python experiments/depth_speed.py

Synthetic 48x48 inputs, channels_last, 3 warm-up then 8 timed steps; prints img/s and the
minutes one epoch of FER2013 Training (28,709 images) would take. It excludes augmentation,
data loading and evaluation, so real members run 10-20% slower.
"""

import time

import torch

from ferens.models.factory import create_member_model


def train_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


torch.set_num_threads(1)
for name, stem, width in [("resnet18", "default", 0.5), ("resnet34", "default", 0.5),
                          ("resnet50", "default", 0.5), ("resnet18", "default", 1.0),
                          ("resnet18", "s2", 0.5)]:
    model = create_member_model(name, stem=stem, width=width).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(64, 1, 48, 48).to(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (64,))
    train_steps(model, opt, x, y, 3)
    start, n = time.perf_counter(), 8
    train_steps(model, opt, x, y, n)
    rate = 64 * n / (time.perf_counter() - start)
    print(f"{name} stem={stem} width={width}: {rate:.0f} img/s, "
          f"{28709 / rate / 60:.1f} min per epoch", flush=True)
