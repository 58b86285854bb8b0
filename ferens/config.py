"""The typed configuration of one ensemble member; it round-trips through config.json.

This module imports neither torch nor albumentations, so reading a config (``ferens study
--no-train``, the report, the exporter's checks) stays cheap: the choices below are declared
here, and ``ferens.data.augment`` and ``ferens.models.factory`` check at import that they implement
exactly these names.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ferens.classes import CLASS_NAMES
from ferens.errors import FerensError
from ferens.models.pretrained import is_timm_spec

# Named augmentation recipes: albumentations pipelines (built by ferens.data.augment) and the same
# recipes in plain torch on whole batches (ferens.data.torch_augment).
TORCH_AUGMENTATIONS = ("torch-light", "torch-strong")
AUGMENTATIONS = ("none", "light", "strong", *TORCH_AUGMENTATIONS)
# ResNet stems (applied by ferens.models.factory), with what each one does.
STEMS = {
    "default": "stock stem: stride-2 conv + max-pool (4x downsampling, cheapest)",
    "s2": "stride-2 conv, no max-pool (2x downsampling, ~2.5x the cost)",
    "s1": "stride-1 conv, no max-pool (no downsampling, ~10x the cost)",
}
IMBALANCE = ("none", "weighted", "focal", "oversample")
TTA = ("none", "flip", "shift", "tencrop")
# engine 1: the v1 loop that trained results/study (one augmentation stream per epoch in the
# training process; best epoch chosen on val without TTA). engine 2: per-sample seeded
# loading (worker-count independent) and selection with the saved predictions' TTA.
ENGINES = (1, 2)
# What a saved config.json that lacks a field ran with, where that differs from today's default:
# configs written before `engine` existed ran engine 1. Every other missing field takes its
# default (see `saved_defaults`).
LEGACY_DEFAULTS = {"engine": 1}
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")

# Numeric bounds, checked in one place: (low, high, low inclusive, high inclusive).
RANGES = {
    "max_train_samples": (0, math.inf, True, False),
    "width": (0, 8, False, True),
    "drop_rate": (0, 1, True, False),
    "input_size": (8, 512, True, True),
    "crop_size": (0, 512, True, True),
    "effective_beta": (0, 1, True, False),
    "focal_gamma": (0, 20, True, True),
    "oversample_power": (0, 1, True, True),
    "label_smoothing": (0, 1, True, False),
    "lr": (0, 10, True, True),
    "weight_decay": (0, 10, True, True),
    "momentum": (0, 1, True, False),
    "batch_size": (1, 65536, True, True),
    "epochs": (1, 100_000, True, True),
    "warmup_epochs": (0, 100_000, True, True),
    "patience": (0, math.inf, True, False),
    "seed": (0, 2**31 - 1, True, True),
    "threads": (0, 4096, True, True),
    "workers": (0, 256, True, True),
    "ema_decay": (0, 1, True, False),
    "mixup_alpha": (0, 100, True, True),
    "cutmix_alpha": (0, 100, True, True),
    "mix_prob": (0, 1, True, True),
    "ferplus_soft": (0, 1, True, True),
    "distill_weight": (0, 1, True, True),
    "distill_temperature": (0, 100, False, True),
    "val_fraction": (0, 1, True, False),
    "test_fraction": (0, 1, True, False),
    "backbone_lr_scale": (0, 10, False, True),
    "freeze_backbone_epochs": (0, 100_000, True, True),
}


@dataclass
class TrainConfig:
    """Everything that decides a member's result; saved as ``runs/<name>/config.json``."""

    name: str = "member"
    out_dir: str = "runs"
    data: str | None = None
    labels: str = "fer2013"
    ferplus: str | None = None
    max_train_samples: int = 0
    # An image folder without val/ (test/): a stratified share of train/ becomes that split.
    val_fraction: float = 0.0
    test_fraction: float = 0.0
    # The data's class names in label order; None = FER2013's seven. Filled in from the data
    # by train-member (a value given here must match what the data holds).
    classes: list | None = None

    model: str = "resnet18"
    stem: str = "default"
    # --width: multiplies the 4 residual stages' channels (64/128/256/512); a plain ResNet's
    # stem stays 64 channels (timm's stem_width, which ferens also sets, is read by deep stems
    # such as resnet18d only). Saved models depend on this: it is documented, not changed.
    width: float = 1.0
    pretrained: str | None = None   # a local weights file, or timm / timm:TAG (timm's own)
    init: str | None = None         # a ferens run, bundle or bundle member (default: shipped)
    drop_rate: float = 0.0
    backbone_lr_scale: float = 1.0  # lr of everything but the classifier head, relative to lr
    freeze_backbone_epochs: int = 0  # train only the head for the first N epochs

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
    # The TTA that picks the best epoch (val is predicted with it after every epoch): auto = the
    # saved predictions' `tta` (engine 2). A cheaper one (flip for a tencrop member) saves the
    # per-epoch cost of many views; the saved predictions still use `tta` at the chosen epoch.
    select_tta: str = "auto"
    seed: int = 0
    threads: int = 0
    channels_last: bool = True
    extra: dict = field(default_factory=dict)

    # Engine: data pipeline version, device, precision, loader workers, torch.compile.
    engine: int = 2
    device: str = "auto"
    precision: str = "auto"
    workers: int = 0
    compile: bool = False

    # Recipe features of study v2 (all off by default).
    ema_decay: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    alternate_flip: bool = False
    ferplus_soft: float = 0.0
    teacher: str | None = None
    distill_weight: float = 0.5
    distill_temperature: float = 2.0

    def __post_init__(self) -> None:
        self._check_types_and_ranges()
        checks = {
            "labels": (self.labels, ("fer2013", "ferplus")),
            "stem": (self.stem, tuple(STEMS)),
            "augment": (self.augment, AUGMENTATIONS),
            "imbalance": (self.imbalance, IMBALANCE),
            "weight_scheme": (self.weight_scheme, ("inverse", "effective")),
            "focal_alpha": (self.focal_alpha, ("none", "inverse", "effective")),
            "optimizer": (self.optimizer, ("adamw", "sgd")),
            "early_stop_metric": (self.early_stop_metric, ("accuracy", "macro_f1")),
            "tta": (self.tta, TTA),
            "select_tta": (self.select_tta, ("auto", *TTA)),
            "engine": (self.engine, ENGINES),
            "precision": (self.precision, ("auto", "fp32", "bf16", "fp16")),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise FerensError(f"config {key}={value!r} is not one of {list(allowed)}")
        if self.labels == "ferplus" and not self.ferplus:
            raise FerensError("labels=ferplus needs --ferplus PATH (fer2013new.csv)")
        for key in ("tta", "select_tta"):
            if getattr(self, key) == "tencrop" and not 0 < self.crop_size < self.input_size:
                raise FerensError(f"{key}=tencrop needs a crop_size smaller than input_size "
                                  f"(got crop_size={self.crop_size}, "
                                  f"input_size={self.input_size})")
        if not NAME_PATTERN.fullmatch(self.name):
            raise FerensError(f"config name={self.name!r}: use letters, digits and . _ + - "
                              "(a run name is one folder under out_dir)")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise FerensError(f"config device={self.device!r}: expected auto, cpu, cuda or "
                              "cuda:N")
        if self.crop_size >= self.input_size:
            raise FerensError(f"config crop_size={self.crop_size} must be smaller than "
                              f"input_size={self.input_size} (0 = no crop)")
        if self.ferplus_soft and not self.ferplus:
            raise FerensError("ferplus_soft needs --ferplus PATH (fer2013new.csv)")
        if self.ferplus_soft and self.labels == "ferplus":
            raise FerensError("ferplus_soft mixes FER+ votes into FER2013 labels; it cannot be "
                              "combined with labels=ferplus")
        if self.batch_augmented and (self.engine < 2 or self.augment_override):
            raise FerensError(f"augment={self.augment!r} (whole batches in torch, on the "
                              "training device) needs engine=2 and no augment_override")
        if self.engine == 1 and (self.workers or self.uses_new_recipe_features
                                 or self.select_tta != "auto"):
            raise FerensError("engine=1 reproduces v1 runs only: it has no loader workers, EMA, "
                              "mixing, alternating flip, FER+ soft targets, teacher or "
                              "select_tta")
        self._check_transfer_fields()

    @property
    def batch_augmented(self) -> bool:
        """Augmented in torch on whole batches on the training device (no loader workers)."""
        return self.augment in TORCH_AUGMENTATIONS

    def _check_transfer_fields(self) -> None:
        """Class names, pretrained weights and fine-tuning options (issue 26)."""
        if self.classes is not None:
            names = self.classes
            if (len(names) < 2 or not all(isinstance(c, str) and c.strip() for c in names)
                    or len(set(names)) != len(names)):
                raise FerensError(f"config classes={str(names)[:200]}: expected two or more "
                                  "distinct non-empty class names")
        if self.init and self.pretrained:
            raise FerensError("give --init (a ferens model) or --pretrained (other weights), "
                              "not both: each sets the starting weights")
        if is_timm_spec(self.pretrained):
            if self.width != 1.0:
                raise FerensError(f"--pretrained {self.pretrained}: timm publishes weights for "
                                  f"the full-width {self.model} only; use --width 1 (got "
                                  f"{self.width})")
        if self.val_fraction + self.test_fraction >= 1:
            raise FerensError(f"config val_fraction={self.val_fraction} and test_fraction="
                              f"{self.test_fraction} leave no training rows (their sum must be "
                              "under 1)")
        if self.freeze_backbone_epochs > self.epochs:
            raise FerensError(f"config freeze_backbone_epochs={self.freeze_backbone_epochs} is "
                              f"more than epochs={self.epochs}")
        if self.engine == 1 and (self.init or self.classes or self.val_fraction
                                 or self.test_fraction or self.backbone_lr_scale != 1.0
                                 or self.freeze_backbone_epochs):
            raise FerensError("engine=1 reproduces v1 runs only: it has no --init, class "
                              "names, split fractions, backbone lr scale or freezing")

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class names in label order (FER2013's seven unless ``classes`` says others)."""
        return tuple(self.classes) if self.classes is not None else CLASS_NAMES

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def uses_new_recipe_features(self) -> bool:
        return bool(self.ema_decay or self.mixup_alpha or self.cutmix_alpha
                    or self.alternate_flip or self.ferplus_soft or self.teacher)

    def _check_types_and_ranges(self) -> None:
        """Every field by its declared type, then every number by its range."""
        for f in fields(self):
            value, kinds = getattr(self, f.name), str(f.type).replace(" ", "").split("|")
            ok = ((value is None and "None" in kinds)
                  or ("bool" in kinds and isinstance(value, bool))
                  or ("int" in kinds and isinstance(value, int) and not isinstance(value, bool))
                  or ("float" in kinds and isinstance(value, int | float)
                      and not isinstance(value, bool) and math.isfinite(value))
                  or ("str" in kinds and isinstance(value, str))
                  or ("dict" in kinds and isinstance(value, dict))
                  or ("list" in kinds and isinstance(value, list)))
            if not ok:
                raise FerensError(f"config {f.name}={value!r}: expected {f.type}")
            if isinstance(value, str) and "\x00" in value:
                raise FerensError(f"config {f.name}={value!r}: contains a NUL character")
        for key, (low, high, low_in, high_in) in RANGES.items():
            value = getattr(self, key)
            if (value < low or (value == low and not low_in)
                    or value > high or (value == high and not high_in)):
                lo, hi = ("[" if low_in else "("), ("]" if high_in else ")")
                raise FerensError(f"config {key}={value!r} is outside {lo}{low}, {high}{hi}")

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
        try:
            return cls(**values)
        except FerensError as exc:
            raise FerensError(str(exc) if source == "config" else f"{source}: {exc}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """A saved config.json; a field it lacks gets the value of `saved_defaults`."""
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise FerensError(f"{path}: cannot read config ({str(exc) or 'nested too deeply'})"
                              ) from None
        if not isinstance(values, dict):
            raise FerensError(f"{path}: a config must be a JSON object")
        for key, value in LEGACY_DEFAULTS.items():
            values.setdefault(key, value)
        return cls.from_dict(values, source=str(path))


def saved_defaults() -> dict:
    """The value of every field for a saved config.json that lacks it (the rule of
    `TrainConfig.load`): ``LEGACY_DEFAULTS`` where an older default differs, else today's."""
    return TrainConfig().to_dict() | LEGACY_DEFAULTS


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file (a config or study file); a missing or unreadable file, or bytes that
    are not UTF-8 (a Latin-1 'é'), is one FerensError naming the file and the byte."""
    path = Path(path)
    if not path.is_file():
        raise FerensError(f"{path}: {what} not found")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FerensError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise FerensError(f"{path}: line {line}: byte 0x{raw[exc.start]:02x} is not UTF-8 "
                          "(save the file as UTF-8)") from None


def load_config_file(path: str | Path) -> dict:
    """Member settings from .json (an object) or .toml (the [member] table, or the top
    level), for ``train-member --config``; any problem is one FerensError naming the file."""
    import tomllib

    path = Path(path)
    text = read_text(path, "config file")
    try:
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise FerensError(f"{path}: cannot parse config ({exc})") from None
    except RecursionError:
        raise FerensError(f"{path}: cannot parse config (nested too deeply)") from None
    if isinstance(values, dict) and "member" in values:
        values = values["member"]
    if not isinstance(values, dict):
        raise FerensError(f"{path}: a config must be "
                          + ("a [member] table" if path.suffix == ".toml"
                             else "a JSON object {...}") + f", not {type(values).__name__}")
    return values


def parse_overrides(pairs: list[str]) -> dict:
    """``train-member --set key=value`` overrides: values parsed as JSON when they can be
    (numbers, booleans), else kept as text; ``-`` in a key reads as ``_``."""
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise FerensError(f"--set {pair!r}: expected key=value")
        key = key.strip().replace("-", "_")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def config_differences(a: TrainConfig, b: TrainConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """Human-readable ``key: old -> new`` lines for fields that differ."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]!r} -> {db[k]!r}" for k in da if k not in ignore and da[k] != db[k]]
