"""Chapters import canlib, never redefine it: no `def` of a canlib export, no imports from benchmarks/ or tests/."""

from __future__ import annotations

import ast
import functools
import importlib
import json
import pkgutil
from pathlib import Path

import pytest

import canlib

CHAPTERS = sorted((Path(__file__).resolve().parents[1] / "chapters").glob("*.ipynb"))


def public_names(module) -> set[str]:
    """A module's exports: its ``__all__``, else the public names it defines itself."""
    if hasattr(module, "__all__"):
        return set(module.__all__)
    return {
        name
        for name, obj in vars(module).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == module.__name__
    }


@functools.cache
def canlib_exports() -> dict[str, str]:
    """Every public name of every canlib module, mapped to one module that exports it."""
    exports: dict[str, str] = {}
    modules = [canlib] + [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(canlib.__path__, prefix="canlib.")
        if not info.name.endswith("__main__")
    ]  # importing __main__ would run the CLI
    for module in modules:
        for name in public_names(module):
            exports.setdefault(name, module.__name__)
    return exports


def code_cells(path: Path) -> list[tuple[int, str]]:
    """(cell index, source) of a notebook's code cells, IPython magics and shell lines blanked."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    out = []
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        lines = "".join(cell["source"]).splitlines()
        out.append((index, "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in lines)))
    return out


def defined_functions(source: str) -> list[str]:
    """Names of the functions a cell defines with ``def`` (at any depth)."""
    return [
        node.name for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


def test_the_books_chapters_are_all_there():
    """A chapter missing from the checkout fails here (the checks below are per chapter)."""
    toc = (Path(__file__).resolve().parents[1] / "_toc.yml").read_text()
    listed = sorted(line.split("file:", 1)[1].strip() for line in toc.splitlines() if "chapters/" in line)
    assert listed and [f"chapters/{p.stem}" for p in CHAPTERS] == listed


def test_canlib_exports_are_found():
    exports = canlib_exports()
    # a few names the chapters rely on: if the walk misses them, the check below checks nothing
    for name in ("evaluate", "build_backbone", "paper_windows", "model_complexity", "reference_evaluate"):
        assert name in exports, name


def test_defined_functions_parses_nested_defs():
    source = "%matplotlib inline\ndef outer():\n    def inner():\n        pass\n"
    cleaned = "\n".join("" if line.startswith("%") else line for line in source.splitlines())
    assert defined_functions(cleaned) == ["outer", "inner"]


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_does_not_redefine_canlib(path: Path):
    exports = canlib_exports()
    clashes = [
        f"cell {index}: def {name} (canlib exports it from {exports[name]})"
        for index, source in code_cells(path)
        for name in defined_functions(source)
        if name in exports
    ]
    assert not clashes, f"{path.name} redefines canlib: " + "; ".join(clashes)


def reaches_outside(source: str) -> bool:
    """Does a cell edit ``sys.path`` or import from benchmarks/ or tests/?"""
    if "sys.path" in source:
        return True
    modules = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules.append(node.module or "")
    return any(m.split(".")[0] in ("benchmarks", "tests", "conftest") or m.startswith("bench_") for m in modules)


def test_reaches_outside_detects_benchmark_imports():
    assert reaches_outside("import sys\nsys.path.insert(0, '../benchmarks')")
    assert reaches_outside("from bench_evaluate import make_market_like")
    assert not reaches_outside("from canlib.metrics.reference import make_market_like")


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_imports_only_installed_code(path: Path):
    """Chapters import canlib, not benchmarks/ or tests/ through sys.path."""
    bad = [f"cell {index}" for index, source in code_cells(path) if reaches_outside(source)]
    assert not bad, f"{path.name} reaches outside the installed package: " + ", ".join(bad)
