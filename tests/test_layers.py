"""Dependencies run one way: pipelines -> transforms -> inference -> gemma_ops (common beside them, under
transforms); gemma_ops imports neither Beam nor anything above it. Checked on every import statement,
including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What each package may not import (Beam included where it must stay out).
FORBIDDEN = {
    "gemma_ops": {"apache_beam", "common", "inference", "transforms", "pipelines"},
    "common": {"gemma_ops", "inference", "transforms", "pipelines"},
    "inference": {"transforms", "pipelines"},
    "transforms": {"pipelines"},
}


def imported_top_levels(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downwards(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules in {package}"
    wrong = {
        str(path.relative_to(ROOT)): sorted(imported_top_levels(path) & FORBIDDEN[package])
        for path in files
        if imported_top_levels(path) & FORBIDDEN[package]
    }
    assert wrong == {}


def test_the_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from pipelines.io import ReadRecords\n    import apache_beam as beam\n")
    assert imported_top_levels(module) == {"pipelines", "apache_beam"}
