"""What every study shares: cell formats, generic tables, seeded images, results files and the
generated doc blocks they feed."""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from repvgg_lab.results import (
    markdown_table,
    read_results,
    write_results,
)

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "docs" / "results"


def _pair(value: Sequence[float]) -> str:
    return " / ".join(f"{v:.1e}" for v in value) if value else "-"


# Cell formats of the generic tables: the results file holds raw numbers, the docs these strings.
FORMATS: dict[str, Callable[[Any], str]] = {
    "s": str,
    "e": lambda v: f"{v:.2e}",
    "e1": lambda v: f"{v:.1e}",
    "f1": lambda v: f"{v:.1f}",
    "f2": lambda v: f"{v:.2f}",
    "f3": lambda v: f"{v:.3f}",
    "x": lambda v: f"{v:.2f}x",
    "pct": lambda v: f"{v:.1%}",
    "ulp": lambda v: f"{v:.2f} ulp",
    "g": lambda v: f"{v:g}",
    "pair": _pair,
    "loads": lambda v: " / ".join(f"{x:.1f}" for x in v),
}


def cell(value: Any, fmt: str) -> str:
    """One table cell: None is '-', anything else goes through FORMATS[fmt]."""
    return "-" if value is None else FORMATS[fmt](value)


def table(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[Any]]) -> dict[str, Any]:
    """A generic table record: column (header, format) pairs and rows of raw values."""
    return {"columns": [list(c) for c in columns], "rows": [list(r) for r in rows]}


def render_table(record: dict[str, Any]) -> list[str]:
    """Markdown lines of a `table` record."""
    header = [name for name, _ in record["columns"]]
    formats = [fmt for _, fmt in record["columns"]]
    rows = [[cell(v, f) for v, f in zip(row, formats, strict=True)] for row in record["rows"]]
    return markdown_table(header, rows)


def images(batch: int, size: int, seed: int = 0, device: str | torch.device = "cpu") -> Tensor:
    """`batch` random images of `size` x `size`, the same for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=gen).to(device)


def read_yaml(path: Path) -> Any:
    """A YAML file's content, None when it is missing or unreadable."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def run_config(run_dir: Path) -> dict[str, Any]:
    """A run's saved Hydra config (`.hydra/config.yaml`), empty when there is none."""
    return read_yaml(run_dir / ".hydra" / "config.yaml") or {}


def results_path(name: str) -> Path:
    """docs/results/NAME.json, the committed results file of a study."""
    return RESULTS_DIR / f"{name}.json"


def save_results(
    path: str | Path,
    results: dict[str, Any],
    command: str | None = None,
    threads: int | None = None,
) -> Path:
    """Write a results file; when it is a committed one, re-render the doc blocks it feeds."""
    path = write_results(path, results, command=command, threads=threads)
    log.info("wrote %s", path)
    if Path(path).resolve().parent == RESULTS_DIR.resolve():
        render_docs(Path(path).name)
    return path


def render_docs(results_file: str) -> list[Path]:
    """Re-render, in README.md and docs/*.md, the generated blocks fed by docs/results/FILE."""
    from repvgg_lab.studies import docs

    changed = docs.render_docs(ROOT, results_file=results_file)
    for doc in changed:
        log.info("re-rendered %s", doc)
    return changed


def study_parser(doc: str, results_file: str) -> argparse.ArgumentParser:
    """A study's command line: its docstring as help, plus --results and --render."""
    parser = argparse.ArgumentParser(
        description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"write a results file (docs/results/{results_file})",
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help=f"only re-render the doc blocks from the committed docs/results/{results_file}",
    )
    return parser


def rendered(results_file: str) -> dict[str, Any]:
    """Re-render the doc blocks fed by a committed results file; return its record."""
    render_docs(results_file)
    return read_results(RESULTS_DIR / results_file)


def setup_logging(level: int = logging.INFO) -> None:
    """Log lines with time and source on stderr (the command lines' default)."""
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")


def run_job(out: Path, overrides: list[str], threads: int) -> dict[str, float]:
    """`python train.py OVERRIDES` writing to `out`, in a fresh process; its metrics.json."""
    command = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={out}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "offline"}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"train.py failed in {out} (exit {done.returncode}):\n{tail}")
    log.info("%s: %.0f s", out, time.perf_counter() - start)
    return json.loads((out / "metrics.json").read_text())


def stats(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value) and the values."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }
