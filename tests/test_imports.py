"""The import rule: what reads configs or predictions never imports torch, and ferens modules
import each other without cycles.

Each check runs in a fresh interpreter, since this test process has long imported torch.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ferens"
ROOT = PACKAGE.parent
HEAVY = ("torch", "timm", "albumentations")
# Modules that read configs, predictions or run folders, combine, report or drive a study: none
# of them may import torch (at module level; training itself is only imported where it runs).
# Every module of combine/ and report/ is listed, whatever its name.
TORCH_FREE = (
    "ferens", "ferens.classes", "ferens.errors", "ferens.config", "ferens.runs",
    "ferens.io", "ferens.outputs", "ferens.deploy.bundle_format", "ferens.report.build",
    "ferens.study.local", "ferens.study.spec", "ferens.study.members", "ferens.study.pipeline",
    "ferens.study.ray_backend", "ferens.study.children", "ferens.provenance", "ferens.study.lanes",
    "ferens.data.fer2013", "ferens.data.dataset", "ferens.data.imagefolder",
    # deploy: finding and cropping faces, reading inputs and writing predictions need no torch
    "ferens.deploy.faces", "ferens.deploy.face_crops", "ferens.deploy.face_cascades",
    "ferens.deploy.face_mtcnn", "ferens.deploy.media", "ferens.deploy.writers",
    *sorted(f"ferens.{stage}.{p.stem}" for stage in ("combine", "report")
            for p in (PACKAGE / stage).glob("*.py") if p.stem != "__init__"),
)
# Prints which of HEAVY the code before it imported, as JSON, even when that code raised.
REPORT_HEAVY = (f"import json, sys; print(json.dumps([m for m in {HEAVY!r} "
                "if m in sys.modules]))")


def _python(code: str, **kwargs) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=False, **kwargs)


def _heavy_after(code: str) -> list[str]:
    done = _python(f"{code}\n{REPORT_HEAVY}")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_config_loads_no_torch_timm_or_albumentations():
    assert _heavy_after("import ferens.config; ferens.config.TrainConfig(width=0.5)") == []


def test_modules_that_read_configs_or_predictions_import_no_torch():
    heavy = _heavy_after("import importlib\n"
                         f"for name in {TORCH_FREE!r}: importlib.import_module(name)")
    if heavy:  # name the module that pulled it in
        culprits = [m for m in TORCH_FREE if _heavy_after(f"import {m}")]
        pytest.fail(f"{culprits} import {heavy}")


def test_study_no_train_loads_no_torch(tmp_path):
    from helpers import complementary_members

    results = tmp_path / "results"
    complementary_members(results / "members")
    study = tmp_path / "study.toml"
    study.write_text(f'[study]\nresults_dir = "{results}"\nensemble_methods = ["mean", "stack"]\n'
                     'adjust = ["a", "stack"]\n'
                     f'[defaults]\nout_dir = "{tmp_path / "runs"}"\n'
                     + "".join(f'[[members]]\nname = "{n}"\n' for n in "abc"))
    code = ("import sys\nfrom ferens.cli import main\n"
            f"sys.argv = ['ferens', 'study', {str(study)!r}, '--no-train']\nmain()")
    assert _heavy_after(code) == []
    assert (results / "ensembles" / "stack" / "summary.json").is_file()
    assert (results / "adjusted" / "a-adjusted" / "summary.json").is_file()
    assert (results / "report" / "report.html").is_file()


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Every ferens module -> the ferens modules it imports anywhere in its source: at module
    level and inside functions alike (a lazy import hides a cycle from Python, not from a
    reader), and ``from ferens.pkg import mod`` counts as importing ``ferens.pkg.mod``."""
    paths = {_module_name(p, package.parent): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        parent = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from .mod import y
                    anchor = parent.split(".")[:len(parent.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in paths and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, the first repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_ferens_modules_import_each_other_without_cycles():
    graph = import_graph()
    assert {"ferens.deploy.bundle", "ferens.deploy.export", "ferens.outputs",
            "ferens.study.ray_backend"} <= set(graph)
    assert "ferens.deploy.bundle" in graph["ferens.deploy.export"]
    assert "ferens.deploy.bundle_format" in graph["ferens.outputs"]      # the edges are seen
    assert "ferens.report.plots" in graph["ferens.report.sections"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import(tmp_path):
    package = tmp_path / "ferens"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from ferens.b import f\n")
    (package / "b.py").write_text("def f():\n    from ferens import a\n")
    (package / "c.py").write_text("import ferens.a\nfrom . import b\n")
    graph = import_graph(package)
    assert graph["ferens.c"] == {"ferens", "ferens.a", "ferens.b"}  # `from . import b`: both
    assert find_cycle(graph) == ["ferens.a", "ferens.b", "ferens.a"]
