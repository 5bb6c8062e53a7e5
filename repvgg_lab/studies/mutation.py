"""Mutation check: every promise has a small change to the package that must fail a test.

Each `Mutation` replaces one snippet of one file in a temporary copy of the working tree and
runs the tests that guard the promise (the default, unmarked selection, stopping at the first
failure). A mutation is *caught* when those tests fail, *missed* when they pass, and *stale*
when its snippet is no longer in the file (the code moved: update the list)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mutation:
    """Replace `old` (exactly once in `path`) by `new`; `tests` must then fail."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


def tracked_files(root: Path) -> list[str]:
    """Files git tracks plus untracked ones it does not ignore (what a commit would hold)."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    return [p for p in out.decode().split("\0") if p and (root / p).is_file()]


def copy_tree(root: Path, dest: Path) -> None:
    """A copy of the working tree's source files (no virtual environment, no outputs)."""
    for rel in tracked_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def apply(tree: Path, mutation: Mutation) -> bool:
    """Apply `mutation` inside `tree`; False (nothing changed) if its snippet is not there once."""
    path = tree / mutation.path
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if text.count(mutation.old) != 1:
        return False
    path.write_text(text.replace(mutation.old, mutation.new), encoding="utf-8")
    return True


def run_tests(tree: Path, tests: tuple[str, ...], threads: int) -> tuple[int, str]:
    """(exit code, last output lines) of `pytest -x` over `tests` inside `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    return done.returncode, " | ".join(tail)


def check(
    root: Path, mutations: list[Mutation], threads: int = 2, workdir: Path | None = None
) -> list[dict[str, Any]]:
    """Apply each mutation to a fresh copy of `root` and run its tests; one row per mutation."""
    rows = []
    for m in mutations:
        tree = Path(
            workdir or os.environ.get("TMPDIR", "/tmp"), f"mutation-{os.getpid()}-{len(rows)}"
        )
        shutil.rmtree(tree, ignore_errors=True)
        copy_tree(root, tree)
        start = time.monotonic()
        try:
            if not apply(tree, m):
                row = {"verdict": "stale", "exit": None, "tail": f"snippet not found in {m.path}"}
            else:
                code, tail = run_tests(tree, m.tests, threads)
                # 1: tests failed. 2-4 (interrupted, internal or usage error) also stop the suite
                # but say nothing about the promise, so they are reported as errors.
                verdict = {0: "missed", 1: "caught"}.get(code, "error")
                row = {"verdict": verdict, "exit": code, "tail": tail}
        finally:
            shutil.rmtree(tree, ignore_errors=True)
        row.update(name=m.name, tests=list(m.tests), seconds=round(time.monotonic() - start, 1))
        log.info("%-7s %s (%.0f s)", row["verdict"], m.name, row["seconds"])
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    lines = ["| mutation | tests | verdict | s |", "|---|---|---|---|"]
    lines += [
        f"| {r['name']} | {' '.join(r['tests'])} | {r['verdict']} | {r['seconds']:.0f} |"
        for r in rows
    ]
    return "\n".join(lines)
