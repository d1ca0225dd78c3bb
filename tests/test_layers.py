"""The package's modules import downwards only: each layer uses the layers below it.

Every ``sepfl`` import in every module is read from the source (function-level
imports included, since a lazy import is still a dependency), so a new upward
import fails here instead of growing a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "sepfl"

# lowest first; a module may import modules of lower layers only
LAYERS = [
    {"_version", "_validate", "_core", "_cuda"},
    {"_threads", "features", "config", "metrics", "device", "ops"},
    {"io", "edges"},
    {"knn", "model"},
    {"datasets", "checkpoint", "stages", "baselines"},
    {"distributed", "incremental"},
    {"cluster"},
    {"train"},
    {"estimator", "report"},
    {"cli"},
    {"__init__"},
]
LAYER = {name: depth for depth, names in enumerate(LAYERS) for name in names}


def sepfl_imports(path: Path) -> set:
    """Names of the ``sepfl`` modules that the file at ``path`` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "sepfl":
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names
                         if alias.name.startswith("sepfl."))
    return found


def test_every_module_has_a_layer():
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    assert modules - set(LAYER) == set()


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.stem)
def test_imports_go_down_only(path):
    upward = {name: LAYER[name] for name in sepfl_imports(path)
              if LAYER[name] >= LAYER[path.stem]}
    assert upward == {}, f"{path.stem} (layer {LAYER[path.stem]}) imports {upward}"


def test_the_reader_sees_lazy_and_package_imports(tmp_path):
    source = tmp_path / "example.py"
    source.write_text("from sepfl import edges, ops\nimport sepfl.knn\n"
                      "def f():\n    from sepfl.model import PairClassifier\n")
    assert sepfl_imports(source) == {"edges", "ops", "knn", "model"}
