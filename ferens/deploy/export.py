"""Writing a bundle: pack a member, ensemble or adjusted run folder for prediction on new faces.

    >>> from ferens.deploy.export import export_bundle
    >>> export_bundle("ensembles/best", "model.ferens", onnx=True)      # doctest: +SKIP

The export walks the run folder into the manifest's ``combiner`` tree (``ferens.deploy.bundle``
loads and applies bundles), checks that the tree reproduces the run's saved test predictions,
then copies each member's config and weights (optionally fp16, optionally ONNX) with their
SHA-256 into a temporary folder renamed into place.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax
from torch import nn

from ferens.combine.ensemble import ferens_version
from ferens.combine.fitted import load_fitted, to_params
from ferens.config import TrainConfig
from ferens.data.fer2013 import file_sha256
from ferens.deploy.bundle import combine_outputs
from ferens.deploy.bundle_format import FORMAT, FORMAT_VERSION, MANIFEST
from ferens.errors import FerensError
from ferens.io import read_json, write_json
from ferens.models.inference import load_member_model
from ferens.outputs import output_folder
from ferens.runs import Predictions, load_predictions, row_positions

WEIGHTS_FILE = "best.safetensors"
ONNX_OPSET = 17
VERIFY_TOLERANCE = 1e-5


@dataclass
class _Plan:
    """What an export collects while walking a run folder: member folders and the combiner."""

    member_dirs: list[Path] = field(default_factory=list)

    def add_member(self, path: Path) -> dict:
        resolved = path.resolve()
        if resolved not in self.member_dirs:
            self.member_dirs.append(resolved)
        return {"member": self.member_dirs.index(resolved)}


def _member_path(ensemble_dir: Path, recorded: str) -> Path:
    """A member path as recorded by `ferens ensemble`: as given, or relative to the ensemble."""
    candidates = [Path(recorded), ensemble_dir / recorded, ensemble_dir.parent / recorded]
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    raise FerensError(f"{ensemble_dir}: member folder {recorded!r} not found (tried "
                      + ", ".join(str(c) for c in candidates) + ")")


def _plan_node(run_dir: Path, plan: _Plan) -> dict:
    """The combiner node for a member or ensemble folder (recursing into ensemble members)."""
    config = read_json(run_dir / "config.json")
    if config.get("kind") == "adjusted":
        source = _member_path(run_dir, config["source"])
        adjuster = load_fitted(run_dir)  # fitted.json, or config.json for older runs
        return {"adjust": {"tau": adjuster.tau_, "log_prior": adjuster.log_prior_.tolist()},
                "inputs": [_plan_node(source, plan)]}
    if config.get("kind") != "ensemble":
        for needed in (WEIGHTS_FILE, "summary.json"):
            if not (run_dir / needed).is_file():
                raise FerensError(f"{run_dir}: no {needed}; only finished train-member runs "
                                  "(or ensembles of them) can be exported")
        return plan.add_member(run_dir)
    fitted = load_fitted(run_dir)  # fitted.json, or summary.json for older runs
    names = [m["name"] for m in config["members"]]
    if fitted.members != names or fitted.combiner.method != config["method"]:
        raise FerensError(f"{run_dir}: the fit ({fitted.combiner.method} of {fitted.members}) "
                          f"is not config.json's ({config['method']} of {names})")
    dirs = [_member_path(run_dir, m["path"]) for m in config["members"]]
    node = {"method": config["method"], "names": names,
            "inputs": [_plan_node(d, plan) for d in dirs]}
    if fitted.temperature is not None:
        node["temperatures"] = fitted.temperature.temperatures_.tolist()
    return node | to_params(fitted.combiner)


def _test_predictions(run_dir: Path) -> Predictions:
    """A run's saved test predictions (the only split an export reads)."""
    return load_predictions(run_dir / "predictions" / "test.npz")


def _aligned_logits(preds: Predictions, want: np.ndarray, where: Path) -> np.ndarray:
    """Saved logits reordered to the row ids `want`."""
    order = row_positions(preds.row_ids, want)
    if (order < 0).any():
        raise FerensError(f"{where}: test predictions lack row id {int(want[order < 0][0])}")
    return preds.logits[order].astype(np.float64)


def _verify(run_dir: Path, combiner: dict, member_dirs: list[Path]) -> float:
    """Max |probability| difference between the combiner on saved member test logits and the run."""
    root = _test_predictions(run_dir)
    logits = [_aligned_logits(_test_predictions(d), root.row_ids, d) for d in member_dirs]
    diff = float(np.abs(softmax(combine_outputs(combiner, logits), axis=1) - root.probs).max())
    if diff > VERIFY_TOLERANCE:
        raise FerensError(f"{run_dir}: the exported combiner does not reproduce the saved test "
                          f"predictions (max probability difference {diff:.2e})")
    return diff


def _write_member(src: Path, dest: Path, onnx: bool, half: bool = False) -> dict:
    """Copy one member's config and weights (fp16 with ``half``; ONNX too with ``onnx``);
    returns its manifest entry."""
    cfg = TrainConfig.load(src / "config.json")
    load_member_model(cfg, src / WEIGHTS_FILE, torch.device("cpu"))  # truncated: fail now
    dest.mkdir(parents=True)
    cfg.save(dest / "config.json")
    if half:
        from safetensors.torch import load_file, save_file

        state = load_file(str(src / WEIGHTS_FILE))
        save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()},
                  str(dest / "model.safetensors"))
    else:
        shutil.copyfile(src / WEIGHTS_FILE, dest / "model.safetensors")
    if onnx:
        export_onnx(load_member_model(cfg, dest / "model.safetensors", torch.device("cpu")), cfg,
                    dest / "model.onnx")
    summary = read_json(src / "summary.json") if (src / "summary.json").is_file() else {}
    files = sorted(p.name for p in dest.iterdir())
    return {"name": cfg.name, "source": str(src), "test_accuracy": summary.get("test", {}).get(
        "accuracy"), "files": {f: file_sha256(dest / f) for f in files}}


def export_onnx(model: nn.Module, cfg: TrainConfig, path: Path) -> Path:
    """ONNX export of one member (NCHW float input in [-1, 1], dynamic batch axis)."""
    side = cfg.crop_size or cfg.input_size
    dummy = torch.zeros(2, 1, side, side)
    model = model.to(memory_format=torch.contiguous_format).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, input_names=["input"],
                          output_names=["logits"], opset_version=ONNX_OPSET,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def export_bundle(run_dir: str | Path, out: str | Path, onnx: bool = False,
                  half: bool = False) -> Path:
    """Pack a member, ensemble or adjusted run folder into a self-contained bundle at `out`.

    ``half`` stores the weights as float16 (half the size; they are widened to float32 on
    load)."""
    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise FerensError(f"{run_dir}: run folder not found")
    plan = _Plan()
    combiner = _plan_node(run_dir, plan)
    verified = None if "member" in combiner else _verify(run_dir, combiner, plan.member_dirs)
    with output_folder(out, "bundle") as tmp:
        members = [_write_member(d, tmp / "members" / str(i), onnx, half)
                   for i, d in enumerate(plan.member_dirs)]
        config = read_json(run_dir / "config.json")
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "ferens_version": ferens_version(), "torch": torch.__version__,
            "name": config.get("name") or run_dir.name, "source": str(run_dir.resolve()),
            "kind": "member" if "member" in combiner else config["kind"],
            "method": combiner.get("method"), "class_names": _class_names(run_dir),
            "onnx": onnx, "members": members, "combiner": combiner,
            "verified_max_test_probability_difference": verified,
            "weights_dtype": "float16" if half else "float32",
        }
        write_json(tmp / MANIFEST, manifest)
    return out


def _class_names(run_dir: Path) -> list[str]:
    """Class names from the run's saved test predictions."""
    return list(_test_predictions(run_dir).class_names)
