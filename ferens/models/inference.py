"""Running a trained member: device and precision choice, model loading, TTA views, batching.

Training, bundles, ``ferens predict`` and ``ferens export`` all predict through this module,
so none of them imports the training loop.

    >>> from ferens.models.inference import load_member_model, predict_logits, select_device
    >>> device = select_device("auto")                                  # doctest: +SKIP
    >>> model = load_member_model(cfg, "runs/m/best.safetensors", device)  # doctest: +SKIP
    >>> logits = predict_logits(model, faces, cfg, device)              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ferens.config import RANGES, TrainConfig
from ferens.data.augment import apply, eval_pipeline
from ferens.errors import FerensError
from ferens.models.factory import create_member_model

SHIFT_PIXELS = 2  # the "shift" TTA moves the view this many pixels up, down, left and right


MAX_THREADS = RANGES["threads"][1]  # the config's bound, one number for every thread option


def configure_threads(threads: int) -> int:
    """Set torch's intra-op threads; 0 means $OMP_NUM_THREADS (when it is a positive whole
    number) or every core."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not (
            0 <= threads <= MAX_THREADS):
        raise FerensError(f"--threads {threads!r}: expected 0 (= $OMP_NUM_THREADS or all "
                          f"cores) or a number of threads up to {MAX_THREADS}")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    from_env = int(env) if env.isdigit() and 0 < int(env) <= MAX_THREADS else 0
    chosen = threads or from_env or (os.cpu_count() or 1)
    torch.set_num_threads(chosen)
    return chosen


def select_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Asking for a GPU that is not there is one clear error, never a silent CPU fallback."""
    if isinstance(spec, torch.device):
        return spec
    spec = spec or "auto"
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FerensError(f"--device {spec}: CUDA is not available on this machine "
                              "(use --device cpu or auto)")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FerensError(f"--device {spec}: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
        return device
    raise FerensError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on a CUDA GPU that supports it (else fp16), fp32 on the CPU (where bf16
    measured 20-40x slower)."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def to_tensor(images: np.ndarray | torch.Tensor, device: torch.device,
              channels_last: bool) -> torch.Tensor:
    """uint8 (N,H,W) -> float (N,1,H,W) scaled to [-1, 1], on ``device``."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    x = images.to(device, non_blocking=True).unsqueeze(1).float()
    x = x.div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def load_member_model(cfg: TrainConfig, weights: str | Path,
                      device: torch.device) -> nn.Module:
    """The member architecture from its config with weights from a safetensors file.

    The model is first built on the meta device (no memory) and its parameter shapes compared
    with those in the safetensors header, so a config declaring a model other than the weights
    (say resnet152 at width 8, ~15 GB) is refused before anything is allocated."""
    from safetensors.torch import load_file

    check_weight_shapes(cfg, weights)
    model = create_member_model(cfg.model, cfg.stem, cfg.width, None, cfg.drop_rate,
                                num_classes=cfg.num_classes)
    try:
        model.load_state_dict(load_file(str(weights)))
    except Exception as exc:
        raise FerensError(f"{weights}: cannot load weights ({exc})") from None
    model = model.to(device).eval()
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def check_weight_shapes(cfg: TrainConfig, weights: str | Path) -> None:
    """Refuse weights whose tensor names and shapes (read from the safetensors header, without
    loading them) differ from those of the model ``cfg`` declares (built on the meta device)."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors' own error types: a damaged or foreign file
        raise FerensError(f"{weights}: cannot load weights ({exc})") from None
    with torch.device("meta"):
        model = create_member_model(cfg.model, cfg.stem, cfg.width, None, cfg.drop_rate,
                                    num_classes=cfg.num_classes)
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if stored != wanted:
        differ = sorted(set(stored) ^ set(wanted)) or sorted(
            k for k in wanted if stored[k] != wanted[k])
        raise FerensError(f"{weights}: the weights do not fit the model its config declares "
                          f"({cfg.model}, stem {cfg.stem}, width {cfg.width}; first differing "
                          f"tensor {differ[0]!r}); refusing to build it")


def tta_views(batch: np.ndarray, cfg: TrainConfig, tta: str) -> list[np.ndarray]:
    """The test-time views of a batch (N,H,W) at ``input_size``.

    ``none``: the (centre-cropped) image. ``flip``: plus its mirror. ``tencrop``: centre and
    four corner crops, each mirrored. ``shift``: the view and four copies moved by
    ``SHIFT_PIXELS`` (edge-padded; for crop models the crop window moves), each mirrored.
    """
    size = cfg.input_size
    c = cfg.crop_size or size
    mid = (size - c) // 2
    if tta == "tencrop":
        offsets = [(mid, mid), (0, 0), (0, size - c), (size - c, 0), (size - c, size - c)]
    elif tta == "shift":
        s = SHIFT_PIXELS
        offsets = [(mid, mid), (mid - s, mid), (mid + s, mid), (mid, mid - s), (mid, mid + s)]
    else:
        offsets = [(mid, mid)]
    pad = max([0] + [max(-y, -x, y + c - size, x + c - size) for y, x in offsets])
    padded = np.pad(batch, ((0, 0), (pad, pad), (pad, pad)), mode="edge") if pad else batch
    crops = [padded[:, pad + y:pad + y + c, pad + x:pad + x + c] for y, x in offsets]
    if tta == "none":
        return crops
    return crops + [crop[:, :, ::-1] for crop in crops]


@torch.inference_mode()
def predict_logits(model: nn.Module, images: np.ndarray, cfg: TrainConfig,
                   device: torch.device, tta: str | None = None, batch_size: int = 256,
                   precision: str = "fp32") -> np.ndarray:
    """Logits for (N,48,48) uint8 images; with TTA, log of the averaged view probabilities."""
    tta = cfg.tta if tta is None else tta
    if batch_size < 1:
        raise FerensError(f"batch size must be at least 1, got {batch_size}")
    model.eval()
    if cfg.input_size != images.shape[-1]:  # 48 px faces need no pipeline (nor albumentations)
        images = apply(eval_pipeline(cfg.input_size), images)
    out = []
    with autocast(device, precision):
        for start in range(0, len(images), batch_size):
            views = tta_views(images[start:start + batch_size], cfg, tta)
            logits = [model(to_tensor(v, device, cfg.channels_last)).float() for v in views]
            if len(logits) == 1:
                out.append(logits[0].cpu())
            else:
                probs = torch.stack([lg.softmax(1) for lg in logits]).mean(0)
                out.append(probs.clamp_min(1e-12).log().cpu())
    return torch.cat(out).numpy()
