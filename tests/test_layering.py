"""Imports point down the layer picture (README "Layout"): reparam <- models <- runtime/prune <-
quant <- lit/deploy/data <- bench <- studies <- pipeline; errors, fileio, utils and progress
serve every layer.

Static checks read every file with `ast` (packages that do not exist yet are skipped, so the test
keeps holding as the tree grows); a subprocess checks what importing the core really loads."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "repvgg_lab"
STDLIB = set(sys.stdlib_module_names)
HEAVY = ("pytorch_lightning", "lightning", "hydra", "omegaconf", "wandb")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names of every module `source` imports, including relative imports and
    importlib.import_module("...") / __import__("...") calls with a literal name."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
                # `from . import x` may import the submodule x.
                found.update(f"{target}.{alias.name}" for alias in node.names)
            else:
                target = node.module or ""
            found.add(target)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant):
                found.add(str(arg.value))
    return found


def _files(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders if folder.exists() for p in folder.rglob("*.py"))


def _violations(files: list[Path], allowed) -> list[str]:
    bad = []
    for path in files:
        module = _module_name(path)
        source = path.read_text(encoding="utf-8")
        for name in imports_of(source, module, path.name == "__init__.py"):
            if not allowed(name):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


def _top(name: str) -> str:
    return name.split(".")[0]


def _under(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_scanner_sees_every_import_form() -> None:
    source = textwrap.dedent(
        """
        import os, wandb as wb
        from torch import nn
        from ..lit import callbacks
        from . import bn
        from .kernels import pad_to
        import importlib
        importlib.import_module("hydra")
        __import__("omegaconf")

        def later():
            import pytorch_lightning
        """
    )
    found = imports_of(source, "repvgg_lab.reparam.repvgg")
    expected = {
        "os",
        "wandb",
        "torch",
        "repvgg_lab.lit",
        "repvgg_lab.lit.callbacks",
        "repvgg_lab.reparam",
        "repvgg_lab.reparam.bn",
        "repvgg_lab.reparam.kernels",
        "importlib",
        "hydra",
        "omegaconf",
        "pytorch_lightning",
    }
    assert expected <= found
    assert imports_of("from . import x", "repvgg_lab.models", is_package=True) >= {
        "repvgg_lab.models.x"
    }


def test_reparam_imports_torch_and_stdlib_only() -> None:
    files = _files(PACKAGE / "reparam")
    assert files, "repvgg_lab/reparam has no files"

    def allowed(name: str) -> bool:
        return _top(name) in STDLIB | {"torch"} or _under(name, "repvgg_lab.reparam")

    assert _violations(files, allowed) == []


# Each package and the packages above it in the layer picture, which it must not import.
UPPER = {
    "models": ("prune", "lit", "data", "deploy", "pipeline", "bench", "studies", "testing"),
    "prune": ("lit", "data", "deploy", "pipeline", "bench", "studies", "testing"),
    "data": ("lit", "deploy", "pipeline", "bench", "studies", "testing"),
    "lit": ("deploy", "pipeline", "bench", "studies", "testing"),
    "runtime": ("prune", "lit", "data", "deploy", "quant", "pipeline", "bench", "studies"),
    "deploy": ("lit", "pipeline", "bench", "studies", "testing"),
    "quant": ("lit", "data", "deploy", "pipeline", "bench", "studies", "testing"),
    "bench": ("pipeline", "studies"),
    "studies": ("pipeline",),
}
# Modules every layer may use: they import the standard library, torch and each other only.
FOUNDATION = ("errors", "fileio", "utils", "progress")


@pytest.mark.parametrize("package", sorted(UPPER))
def test_packages_do_not_import_upper_layers(package: str) -> None:
    files = _files(PACKAGE / package)
    assert files, f"repvgg_lab/{package} has no files"
    upper = tuple(f"repvgg_lab.{p}" for p in UPPER[package])
    heavy = HEAVY if package in ("models", "prune", "quant") else ("hydra", "omegaconf", "wandb")

    def allowed(name: str) -> bool:
        return not _under(name, *upper) and _top(name) not in heavy

    assert _violations(files, allowed) == []


def test_foundation_modules_import_torch_and_each_other_only() -> None:
    files = [PACKAGE / f"{name}.py" for name in FOUNDATION]
    own = tuple(f"repvgg_lab.{name}" for name in FOUNDATION)

    def allowed(name: str) -> bool:  # tqdm: the progress bar
        return _top(name) in STDLIB | {"torch", "tqdm"} or _under(name, *own)

    assert _violations(files, allowed) == []


def test_only_the_pipeline_touches_hydra() -> None:
    files = [
        p
        for p in _files(PACKAGE)
        if p != PACKAGE / "pipeline.py" and (PACKAGE / "pipeline") not in p.parents
    ]
    assert _violations(files, lambda name: _top(name) not in {"hydra", "omegaconf"}) == []


def test_nothing_imports_wandb_directly() -> None:
    files = _files(PACKAGE, ROOT / "scripts") + sorted(ROOT.glob("*.py"))
    assert _violations(files, lambda name: _top(name) != "wandb") == []


def test_importing_the_core_loads_no_training_stack() -> None:
    code = (
        "import json, sys; import repvgg_lab, repvgg_lab.reparam, repvgg_lab.models; "
        "print(json.dumps([repvgg_lab.__file__, sorted({m.split('.')[0] for m in sys.modules})]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    origin, loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(origin).parent == PACKAGE  # this tree was imported, not another checkout
    assert "torch" in loaded  # the probe sees real imports
    assert sorted(set(loaded) & set(HEAVY)) == []
