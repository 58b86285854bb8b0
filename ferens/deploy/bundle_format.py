"""What a bundle folder holds on disk, and whether a folder is one (no torch needed).

``ferens.deploy.export`` writes bundles and ``ferens.deploy.bundle`` loads them; ``ferens.outputs``
asks `is_own_bundle` before an export replaces a folder. Keeping the layout here lets them all use
it without importing each other.
"""

from __future__ import annotations

import json
from pathlib import Path

FORMAT = "ferens-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MEMBER_FILES = ("config.json", "model.safetensors", "model.onnx")
# What a manifest may state (export writes these; make_default_model adds the provenance).
MANIFEST_KEYS = {"format", "format_version", "ferens_version", "torch", "name", "source", "kind",
                 "method", "class_names", "onnx", "members", "combiner",
                 "verified_max_test_probability_difference", "weights_dtype", "provenance"}
MEMBER_KEYS = {"name", "source", "test_accuracy", "files"}


def is_own_bundle(folder: Path) -> bool:
    """True only for a folder that holds a ferens bundle manifest and nothing but bundle files
    (what ``export`` may replace); anything else there is the user's."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return False
    for entry in folder.iterdir():
        if entry.is_symlink() or entry.name not in (MANIFEST, "members"):
            return False
    members = folder / "members"
    if members.exists():
        for member in members.iterdir():
            if member.is_symlink() or not member.is_dir() or not member.name.isdigit():
                return False
            if any(f.is_symlink() or f.name not in MEMBER_FILES for f in member.iterdir()):
                return False
    return True
