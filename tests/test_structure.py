"""House rules a newcomer relies on: small modules and functions, thin scripts."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE, SCRIPTS = ROOT / "repvgg_lab", ROOT / "scripts"
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_SCRIPT_LINES = 400, 60, 100
MAX_SCRIPTS_SHARE = 0.15


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


def test_no_module_over_400_lines() -> None:
    sizes = {str(p.relative_to(ROOT)): _lines(p) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_no_function_over_60_lines() -> None:
    files = [*PACKAGE.rglob("*.py"), *SCRIPTS.glob("*.py"), *ROOT.glob("*.py")]
    assert [f for p in files for f in _long_functions(p)] == []


def test_scripts_are_thin_command_lines() -> None:
    scripts = sorted(SCRIPTS.glob("*.py"))
    assert [s.name for s in scripts if _lines(s) > MAX_SCRIPT_LINES] == []
    package = sum(_lines(p) for p in PACKAGE.rglob("*.py"))
    assert sum(_lines(s) for s in scripts) <= MAX_SCRIPTS_SHARE * package


def test_scripts_import_the_package_not_each_other() -> None:
    for script in SCRIPTS.glob("*.py"):
        tree = ast.parse(script.read_text(encoding="utf-8"))
        names = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        }
        assert "importlib" not in names and "importlib.util" not in names, script.name
