"""Loading and applying model bundles: a member or ensemble packed for prediction on new faces.

    >>> from ferens.deploy.bundle import load_bundle
    >>> load_bundle("model.ferens").predict_proba(faces)                # doctest: +SKIP

``ferens.deploy.export`` writes bundles (``export_bundle``, ``export_onnx``); this module reads,
checks and applies them.

A bundle is a folder::

    manifest.json               format version, class names, how members are combined, checksums
    members/<i>/config.json     the member's TrainConfig
    members/<i>/model.safetensors
    members/<i>/model.onnx      optional (export with onnx=True)

Loading reads JSON and safetensors only (nothing is unpickled) and checks every file's SHA-256.
The ``combiner`` in the manifest is a tree: a leaf ``{"member": i}`` gives member i's logits;
an ensemble node gives log-probabilities from its inputs, exactly as ``ferens.combine.ensemble``
did; an ``adjust`` node applies a ``ferens adjust`` logit adjustment to its one input.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy.special import log_softmax
from torch import nn

from ferens.classes import CLASS_NAMES
from ferens.combine.adjust import adjusted_log_probs
from ferens.combine.ensemble import METHODS, apply_combination, ferens_version
from ferens.config import TTA, TrainConfig
from ferens.data.fer2013 import file_sha256
from ferens.deploy.bundle_format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_KEYS,
    MEMBER_FILES,
    MEMBER_KEYS,
)
from ferens.errors import FerensError
from ferens.models.inference import load_member_model, predict_logits, select_device

BACKENDS = ("torch", "onnx")
FACE_SIDE = 48
MAX_CLASSES = 10_000  # a bound on a manifest's class list (the trial combiner allocates it)


def combine_outputs(node: dict, member_logits: list[np.ndarray]) -> np.ndarray:
    """Evaluate a combiner node: member logits for a leaf, log-probabilities for an ensemble."""
    if "member" in node:
        return np.asarray(member_logits[node["member"]], dtype=np.float64)
    inputs = [combine_outputs(child, member_logits) for child in node["inputs"]]
    if "adjust" in node:
        return adjusted_log_probs(log_softmax(inputs[0], axis=1), node["adjust"]["log_prior"],
                                  node["adjust"]["tau"])
    temps = node.get("temperatures") or [1.0] * len(inputs)
    log_probs = [log_softmax(x / t, axis=1) for x, t in zip(inputs, temps, strict=True)]
    try:
        return apply_combination(node["method"], node, log_probs)
    except FerensError as exc:
        raise FerensError(f"bundle combiner: {exc}") from None


MAX_COMBINER_DEPTH = 32


def _check_node(node, n_members: int, depth: int = 0) -> None:
    """The combiner's shape: tables all the way down, every leaf one of the members."""
    if depth > MAX_COMBINER_DEPTH:
        raise ValueError(f"nested deeper than {MAX_COMBINER_DEPTH}")
    if not isinstance(node, dict):
        raise ValueError(f"a node is a {type(node).__name__}, not a table")
    if "member" in node:
        i = node["member"]
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_members:
            raise ValueError(f"member {i!r} is not one of the bundle's {n_members} members")
        return
    inputs = node.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ValueError("a node has no inputs")
    if "adjust" in node and len(inputs) != 1:
        raise ValueError("an adjust node needs exactly one input")
    if "adjust" not in node and node.get("method") not in METHODS:
        raise ValueError(f"unknown method {node.get('method')!r}")
    for child in inputs:
        _check_node(child, n_members, depth + 1)


def check_combiner(node, n_members: int, where: Path, n_classes: int = len(CLASS_NAMES)
                   ) -> None:
    """Refuse a damaged combiner at load time, before any face is predicted: its shape, then a
    trial run on made-up member logits that must give finite (N, classes) outputs."""
    trial = [np.linspace(-2.0, 2.0, 2 * n_classes).reshape(2, n_classes) + i
             for i in range(n_members)]
    try:
        _check_node(node, n_members)
        with np.errstate(all="ignore"):
            out = combine_outputs(node, trial)
        if np.shape(out) != (2, n_classes) or not np.isfinite(out).all():
            raise ValueError(f"it gives {np.shape(out)} outputs, not finite (N, {n_classes})")
    except (FerensError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RecursionError) as exc:
        raise FerensError(f"{where}: damaged combiner ({str(exc)[:200]})") from None


class _OnnxModule(nn.Module):
    """An ONNX Runtime session behind the nn.Module call interface used by predict_logits."""

    def __init__(self, path: Path):
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise FerensError("the onnx backend needs onnxruntime "
                              "(pip install 'ferens[onnx]')") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.path = path
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own types: a damaged or foreign file
            raise FerensError(f"{path}: cannot load the ONNX model ({_first_line(exc)})"
                              ) from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        try:
            logits = self.session.run(None, {"input": batch})[0]
        except Exception as exc:  # a loadable ONNX file of another model
            raise FerensError(f"{self.path}: the ONNX model fails on faces "
                              f"({_first_line(exc)})") from None
        return torch.from_numpy(logits)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


@dataclass
class BundleMember:
    """One member of a loaded bundle: its config, PyTorch model and optional ONNX file."""

    name: str
    config: TrainConfig
    model: nn.Module
    onnx_path: Path | None
    _onnx: _OnnxModule | None = None

    def runner(self, backend: str) -> nn.Module:
        if backend == "torch":
            return self.model
        if self.onnx_path is None:
            raise FerensError(f"member {self.name}: the bundle has no ONNX model "
                              "(export with --onnx)")
        if self._onnx is None:
            self._onnx = _OnnxModule(self.onnx_path)
        return self._onnx


@dataclass
class Bundle:
    """A loaded bundle: members, how to combine them, and the class names."""

    path: Path
    manifest: dict
    members: list[BundleMember]
    device: torch.device
    tta: str | None = None  # test-time views for every member; None = each member's own

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.manifest["class_names"])

    def with_tta(self, tta: str | None) -> Bundle:
        """The same bundle predicting with ``tta`` views (none | flip | shift | tencrop) instead
        of each member's own; None restores them. Fewer views trade accuracy for speed."""
        if tta is not None and tta not in TTA:
            raise FerensError(f"tta={tta!r}: expected one of {list(TTA)}")
        for m in self.members:
            if tta == "tencrop" and not 0 < m.config.crop_size < m.config.input_size:
                raise FerensError(f"tta=tencrop: member {m.name} was trained on whole "
                                  f"{m.config.input_size} px faces, not crops; use flip or shift")
        return replace(self, tta=tta)

    def member_logits(self, faces: np.ndarray, backend: str = "torch",
                      batch_size: int = 256) -> list[np.ndarray]:
        """Each member's logits (with its own TTA, or ``self.tta``) for uint8 faces (N,48,48)."""
        if backend not in BACKENDS:
            raise FerensError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
        faces = _check_faces(faces)
        return [predict_logits(m.runner(backend), faces, m.config, self.device, tta=self.tta,
                               batch_size=batch_size) for m in self.members]

    def predict_log_proba(self, faces: np.ndarray, backend: str = "torch",
                          batch_size: int = 256) -> np.ndarray:
        """Log-probabilities (N,K) combined exactly as the exported member/ensemble did."""
        outputs = combine_outputs(self.manifest["combiner"],
                                  self.member_logits(faces, backend, batch_size))
        return log_softmax(outputs, axis=1)

    def predict_proba(self, faces: np.ndarray, backend: str = "torch",
                      batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N,K), K = len(class_names), for uint8 grayscale faces (N,48,48)."""
        return np.exp(self.predict_log_proba(faces, backend, batch_size))


def _check_faces(faces: np.ndarray) -> np.ndarray:
    """Accept (N,48,48) or one (48,48) uint8 face."""
    faces = np.asarray(faces)
    if faces.ndim == 2:
        faces = faces[None]
    if faces.ndim != 3 or faces.shape[1:] != (FACE_SIDE, FACE_SIDE) or faces.dtype != np.uint8:
        raise FerensError(f"faces must be uint8 of shape (N,48,48), got {faces.dtype} "
                          f"{faces.shape}")
    return faces


def _read_manifest(path: Path) -> dict:
    """The manifest, checked for format and version before anything else is read."""
    if not path.is_dir():
        raise FerensError(f"{path}: bundle folder not found")
    if not (path / MANIFEST).is_file():
        raise FerensError(f"{path}: not a ferens bundle (no {MANIFEST})")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FerensError(f"{path / MANIFEST}: corrupted manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FerensError(f"{path / MANIFEST}: not a ferens bundle manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise FerensError(
            f"{path}: bundle format version {version} (written by ferens "
            f"{manifest.get('ferens_version', '?')}) is not supported by ferens {ferens_version()}"
            f", which reads format version {FORMAT_VERSION}; re-export it with this version")
    for key in ("members", "combiner", "class_names"):
        if key not in manifest:
            raise FerensError(f"{path / MANIFEST}: corrupted manifest (no {key!r})")
    _refuse_unknown_keys(manifest, MANIFEST_KEYS, path / MANIFEST, "")
    members = manifest["members"]
    if not isinstance(members, list) or not members:
        raise FerensError(f"{path / MANIFEST}: corrupted manifest (no members)")
    for i, entry in enumerate(members):
        files = entry.get("files") if isinstance(entry, dict) else None
        if not isinstance(files, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise FerensError(f"{path / MANIFEST}: corrupted manifest (member {i} is not a "
                              "table with the names and checksums of its files)")
        _refuse_unknown_keys(entry, MEMBER_KEYS, path / MANIFEST, f"member {i} ")
        for name in files:
            if name not in MEMBER_FILES:
                raise FerensError(f"{path / MANIFEST}: member {i} lists {name[:100]!r}, which "
                                  f"is not a file a bundle may contain (only "
                                  f"{list(MEMBER_FILES)}); refusing the whole bundle")
        for needed in ("config.json", "model.safetensors"):
            if needed not in files:
                raise FerensError(f"{path / MANIFEST}: member {i} lists no {needed}")
    names = manifest["class_names"]
    if (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
            or not 2 <= len(names) <= MAX_CLASSES or len(set(names)) != len(names)):
        raise FerensError(f"{path / MANIFEST}: corrupted manifest (class_names is not a list "
                          f"of 2 to {MAX_CLASSES} distinct names)")
    check_combiner(manifest["combiner"], len(members), path / MANIFEST, len(names))
    return manifest


def _refuse_unknown_keys(table: dict, known: set[str], where: Path, what: str) -> None:
    """A manifest states the bundle's contents and nothing else: any other key (extra file
    lists, paths outside the bundle) means it was not written by `ferens export`."""
    unknown = sorted(str(k)[:60] for k in set(table) - known)
    if unknown:
        raise FerensError(f"{where}: {what}states unknown key(s) {unknown[:5]}, which `ferens "
                          "export` never writes; refusing the bundle (tampered or from an "
                          "unknown tool)")


def _refuse_links(path: Path, parts: tuple[str, ...]) -> Path:
    """``path/parts...`` after checking each component below ``path`` with lstat, before
    anything under it is opened: a link anywhere is refused with the same message whatever it
    points at (nothing about the target is revealed)."""
    current = path
    for part in parts:
        current = current / part
        try:
            mode = current.lstat().st_mode
        except FileNotFoundError:
            return current
        except OSError as exc:
            raise FerensError(f"{current}: cannot be read ({exc.strerror})") from None
        if stat.S_ISLNK(mode):
            raise FerensError(f"{current}: is a link; a bundle is opened only through its own "
                              "folders and files, never through a link")
    return current


def _check_files(bundle: Path, index: int, files: dict[str, str]) -> Path:
    """Every listed file of member ``index`` is a plain file (no link on the way, no FIFO)
    inside the member's folder with its recorded SHA-256; returns the member's folder."""
    folder = _refuse_links(bundle, ("members", str(index)))
    for name, digest in files.items():
        file = _refuse_links(bundle, ("members", str(index), name))
        try:
            mode = file.lstat().st_mode
        except FileNotFoundError:
            raise FerensError(f"{file}: missing from the bundle (the manifest lists it)"
                              ) from None
        if not stat.S_ISREG(mode):
            raise FerensError(f"{file}: not a plain file; a bundle holds only files")
        if file_sha256(file) != digest:
            raise FerensError(f"{file}: corrupted (SHA-256 differs from the manifest; "
                              "truncated or modified?)")
    return folder


def load_bundle(path: str | Path, device: torch.device | None = None) -> Bundle:
    """Load a bundle folder (JSON + safetensors only), rejecting other versions or damage."""
    path = Path(path)
    if path.is_symlink() or (path / MANIFEST).is_symlink():
        raise FerensError(f"{path}: is a link; a bundle is opened only through its own folders")
    manifest = _read_manifest(path)
    device = device or select_device()
    names = tuple(manifest["class_names"])
    members = []
    _refuse_links(path, ("members",))
    for i, entry in enumerate(manifest["members"]):
        folder = _check_files(path, i, entry["files"])
        cfg = TrainConfig.load(folder / "config.json")
        if cfg.class_names != names:
            raise FerensError(f"{folder / 'config.json'}: member {i} predicts the classes "
                              f"{list(cfg.class_names)[:10]}, the manifest states "
                              f"{list(names)[:10]}; refusing the bundle")
        onnx_path = folder / "model.onnx" if "model.onnx" in entry["files"] else None
        members.append(BundleMember(entry.get("name", cfg.name), cfg,
                                    load_member_model(cfg, folder / "model.safetensors", device),
                                    onnx_path))
    return Bundle(path, manifest, members, device)
