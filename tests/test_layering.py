"""Edge and cloud are peers on shared_model: neither imports the other, and shared_model imports neither.

Checked twice: in the source (every import statement, those inside functions too), and in a
process that loads the cloud as fer-cloud does, whose modules must hold nothing of the edge.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What each package must never import.
FORBIDDEN = {
    "cloud_server": ("edge_client", "fer_bench"),
    "edge_client": ("cloud_server", "fer_bench"),
    "shared_model": ("edge_client", "cloud_server", "fer_bench"),
}


def imported_packages(source: str) -> set[str]:
    """The top-level packages that the import statements of ``source`` name (relative imports excluded)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_imported_packages_sees_imports_inside_functions_too() -> None:
    source = "import os\nfrom cloud_server.engine import X\n\ndef f():\n    from edge_client import strategies\n    from . import sibling\n"
    assert imported_packages(source) == {"os", "cloud_server", "edge_client"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_it_must_not_stand_on(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(found)
        for path in sorted((ROOT / package).rglob("*.py"))
        if (found := imported_packages(path.read_text()) & set(FORBIDDEN[package]))
    }
    assert not offenders, f"{package} must not import {FORBIDDEN[package]}: {offenders}"


def test_the_cloud_loads_no_edge_module() -> None:
    """Every cloud_server module imported and the CPU default's runtime (shipped export, ONNX Runtime) loaded:
    no module of the edge or of the benchmarks is in the process. (Imports made later, inside functions,
    are the source check's.)"""
    script = (
        "import pkgutil, sys\n"
        "import cloud_server\n"
        "for module in pkgutil.iter_modules(cloud_server.__path__):\n"
        "    __import__(f'cloud_server.{module.name}')\n"
        "sys.modules['cloud_server.runtimes'].load_runtime(None, 'cpu', 'auto', None, 1, None)\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('edge_client', 'fer_bench')))\n"
    )
    loaded = _printed_by(script)
    assert loaded == "[]", loaded


def _printed_by(script: str) -> str:
    """What a fresh Python prints running ``script`` in the repository (which must exit 0)."""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()
