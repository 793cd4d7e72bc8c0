"""The notebook façade stays honest: a sorted ``__all__`` that matches what ``toolkit`` defines, and
notebook-side modules that import without the runner's heavy machinery."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import toolkit

INIT = Path(toolkit.__file__)
# Modules a notebook's kernel imports; DESIGN.md says they must not need papermill.
NOTEBOOK_SIDE = [
    "context",
    "errors",
    "sources",
    "parsers",
    "sinks",
    "exports",
    "state",
    "delivery",
    "mail",
    "xlsx",
    "pdf",
    "xmlexport",
    "sqlsource",
    "queues",
    "workbench",
    "progress",
]


def test_all_is_sorted_and_unique() -> None:
    assert list(toolkit.__all__) == sorted(set(toolkit.__all__))


def test_every_name_in_all_exists() -> None:
    missing = [name for name in toolkit.__all__ if not hasattr(toolkit, name)]
    assert missing == []
    namespace: dict[str, object] = {}
    exec("from toolkit import *", namespace)
    assert set(toolkit.__all__) <= set(namespace)


def test_the_notebook_api_of_design_is_exported() -> None:
    assert {"context", "secret", "metric", "RunContext", "SecretError"} <= set(toolkit.__all__)


def _bound_at_top_level(tree: ast.Module) -> set[str]:
    """Return the names toolkit/__init__.py binds: imports from toolkit, defs, assignments."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("toolkit"):
            names |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_every_public_name_defined_in_the_facade_is_in_all() -> None:
    declared = _bound_at_top_level(ast.parse(INIT.read_text(encoding="utf-8")))
    public = {
        name
        for name in declared
        if not name.startswith("_") and not inspect.ismodule(getattr(toolkit, name, None))
    }
    assert public - set(toolkit.__all__) == set()

    # The same from the live module: anything of ours reachable as toolkit.X must be declared.
    live = {
        name
        for name, value in vars(toolkit).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and (getattr(value, "__module__", None) or "").startswith("toolkit")
    }
    assert live - set(toolkit.__all__) == set()

    # Helpers loaded on first use (PEP 562) are public too, though not bound until then.
    lazy = set(getattr(toolkit, "_LAZY", {}))
    assert lazy - set(toolkit.__all__) == set()


def _existing(modules: list[str]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(f"toolkit.{m}") is not None]


@pytest.mark.parametrize("module", ["toolkit", *(f"toolkit.{m}" for m in _existing(NOTEBOOK_SIDE))])
def test_notebook_side_module_imports_without_papermill(module: str, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        f"import {module}\n"
        "heavy = sorted(m for m in ('papermill', 'nbclient') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"importing {module} imported {proc.stdout.strip()}"
