"""The typed configuration of one ensemble member; it round-trips through config.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ferens.augment import AUGMENTATIONS
from ferens.errors import FerensError
from ferens.models import STEMS

IMBALANCE = ("none", "weighted", "focal", "oversample")


@dataclass
class TrainConfig:
    """Everything that decides a member's result; saved as ``runs/<name>/config.json``."""

    name: str = "member"
    out_dir: str = "runs"
    data: str | None = None
    labels: str = "fer2013"
    ferplus: str | None = None
    max_train_samples: int = 0

    model: str = "resnet18"
    stem: str = "default"
    width: float = 1.0
    pretrained: str | None = None
    drop_rate: float = 0.0

    input_size: int = 48
    crop_size: int = 0
    augment: str = "light"
    augment_override: dict | None = None

    imbalance: str = "none"
    weight_scheme: str = "inverse"
    effective_beta: float = 0.999
    focal_gamma: float = 2.0
    focal_alpha: str = "none"
    oversample_power: float = 1.0
    label_smoothing: float = 0.0

    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    batch_size: int = 64
    epochs: int = 20
    warmup_epochs: float = 1.0
    early_stop_metric: str = "accuracy"
    patience: int = 0

    tta: str = "flip"
    seed: int = 0
    threads: int = 0
    channels_last: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = {
            "labels": (self.labels, ("fer2013", "ferplus")),
            "stem": (self.stem, tuple(STEMS)),
            "augment": (self.augment, AUGMENTATIONS),
            "imbalance": (self.imbalance, IMBALANCE),
            "weight_scheme": (self.weight_scheme, ("inverse", "effective")),
            "focal_alpha": (self.focal_alpha, ("none", "inverse", "effective")),
            "optimizer": (self.optimizer, ("adamw", "sgd")),
            "early_stop_metric": (self.early_stop_metric, ("accuracy", "macro_f1")),
            "tta": (self.tta, ("none", "flip", "tencrop")),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise FerensError(f"config {key}={value!r} is not one of {list(allowed)}")
        if self.labels == "ferplus" and not self.ferplus:
            raise FerensError("labels=ferplus needs --ferplus PATH (fer2013new.csv)")
        if self.tta == "tencrop" and not 0 < self.crop_size < self.input_size:
            raise FerensError("tta=tencrop needs a crop_size smaller than input_size "
                              f"(got crop_size={self.crop_size}, input_size={self.input_size})")
        if self.epochs < 1 or self.batch_size < 1:
            raise FerensError("epochs and batch_size must be at least 1")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise FerensError(f"{source}: unknown config key(s) {unknown}")
        return cls(**values)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()), source=str(path))
        except (OSError, json.JSONDecodeError) as exc:
            raise FerensError(f"{path}: cannot read config ({exc})") from None


def config_differences(a: TrainConfig, b: TrainConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """Human-readable ``key: old -> new`` lines for fields that differ."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]!r} -> {db[k]!r}" for k in da if k not in ignore and da[k] != db[k]]
