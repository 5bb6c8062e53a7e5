"""The default job as a measured run: `python train.py` timed end to end, its final metrics
kept in a results file, and the README's sentence about it rendered from that file."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from repvgg_lab.studies.common import run_config

log = logging.getLogger(__name__)

# The metrics the README quotes (stable names, see DESIGN.md).
QUOTED = (
    "val/acc",
    "test/acc",
    "deploy/test/acc",
    "drift/top1_agree",
    "drift/vs_fp64/train_rel_max",
    "drift/vs_fp64/deploy_rel_max",
    "drift/underflow_frac",
)


def run_default_job(repo: Path, run_dir: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run `python train.py` in `repo` into `run_dir`; wall time, load and quoted metrics."""
    command = [sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}"]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(command, cwd=repo, check=True)
    wall = time.perf_counter() - start
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    missing = [k for k in QUOTED if k not in metrics]
    if missing:
        raise KeyError(f"{run_dir / 'metrics.json'} lacks {', '.join(missing)}")
    return {
        "overrides": list(overrides),
        "wall_s": round(wall, 1),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "epochs": _epochs(run_dir),
        "metrics": {k: metrics[k] for k in QUOTED},
    }


def _epochs(run_dir: Path) -> int | None:
    """`trainer.max_epochs` from the run's saved Hydra config (None if it is not there)."""
    return run_config(run_dir).get("trainer", {}).get("max_epochs")


def render_default_run(record: dict[str, Any]) -> str:
    """The README's paragraph on the default job, from docs/results/default_run.json."""
    r, machine = record["results"], record["machine"]
    m = r["metrics"]
    gpu = "no GPU" if machine["gpu"] == "not available" else machine["gpu"]
    return (
        f"On {machine['cpu']} ({machine['logical_cores']} cores, {gpu}) `python train.py` took "
        f"{r['wall_s']:.0f} s wall for its {r['epochs']} epochs and ended with `val/acc` "
        f"{m['val/acc']:.3f}, `deploy/test/acc` {m['deploy/test/acc']:.3f}, top-1 agreement "
        f"{m['drift/top1_agree']:.3g} between the two nets and "
        f"`drift/vs_fp64/deploy_rel_max` {m['drift/vs_fp64/deploy_rel_max']:.1e} against the "
        f"multi-branch net's own {m['drift/vs_fp64/train_rel_max']:.1e} (measured with "
        f"`{record['command']}` on {record['date'][:10]}, 1-minute load average "
        f"{r['load_before']:.1f} before the run; the installation itself mostly downloads "
        "PyTorch)."
    )
