"""How a machine's cores are shared between the lanes that train a study's members.

Torch-free, so the local backend (``ferens.study.local``) and the Ray backend
(``ferens.study.ray_backend``) plan alike without importing each other.
"""

from __future__ import annotations

import os

# loader workers of a member on a GPU machine: beyond this, worker start-up and memory grow
# faster than the images/s (experiments/gpu/timing.py measures 0..14 workers on the device)
GPU_LOADER_WORKERS_MAX = 8


def gpu_lane_plan(pending: int, gpus: int, cores: int | None = None) -> tuple[int, int]:
    """(lanes, loader workers per lane) on a GPU machine: one member per GPU at a time, the
    CPU cores split between the lanes, two for the training process (and its pin-memory
    thread), the rest loading, at most GPU_LOADER_WORKERS_MAX."""
    cores = cores or os.cpu_count() or 1
    lanes = max(1, min(gpus, pending or 1))
    return lanes, max(0, min(GPU_LOADER_WORKERS_MAX, cores // lanes - 2))


def lane_plan(pending: int, lanes: int = 0, cores: int | None = None) -> tuple[int, int]:
    """(lanes, threads per lane): by default one single-thread lane per core."""
    cores = cores or os.cpu_count() or 1
    lanes = lanes or cores
    lanes = max(1, min(lanes, pending or 1))
    return lanes, max(1, cores // lanes)
