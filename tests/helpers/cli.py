"""Run the entry points as a user does: a fresh interpreter in the repository root."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def run_script(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS` from the repository root, W&B offline, one OpenMP thread."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def load_script(name: str) -> ModuleType:
    """Import `scripts/NAME.py` as the module NAME, to call its functions in-process. It is
    registered in sys.modules first: dataclasses look their module up while a class is built."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
