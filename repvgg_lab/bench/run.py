"""A whole benchmark run: the chosen sections under one thread count, and its results file."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from repvgg_lab.bench.branch_cost import bench_branch_cost_section
from repvgg_lab.bench.convert import bench_convert_section
from repvgg_lab.bench.data_loading import bench_data_section
from repvgg_lab.bench.gpu import bench_gpu_section
from repvgg_lab.bench.keys import RUN
from repvgg_lab.bench.latency import bench_latency_section
from repvgg_lab.bench.result import Run, targets, verdict
from repvgg_lab.bench.settings import Settings
from repvgg_lab.bench.train import bench_train_section
from repvgg_lab.results import write_results
from repvgg_lab.utils import torch_threads

log = logging.getLogger(__name__)


def run_benchmarks(
    s: Settings, sections: tuple[str, ...], threads: int, wait_quiet_s: float = 0.0
) -> dict[str, Any]:
    """Run the chosen sections; returns the JSON-ready results (without command and machine,
    which `write_report` adds)."""
    run = Run(wait_quiet_s=wait_quiet_s)
    started = dt.datetime.now(dt.UTC)
    with torch_threads(threads), run.window(RUN):
        if "convert" in sections:
            bench_convert_section(s, run)
        if "latency" in sections:
            bench_latency_section(s, run)
        if "train" in sections:
            bench_train_section(s, run)
        if "gpu" in sections and torch.cuda.is_available():
            bench_gpu_section(s, run)
        if "branch_cost" in sections:
            bench_branch_cost_section(s, run)
        if "data" in sections:
            bench_data_section(s, run)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "not available"
    return {
        "created": started.isoformat(timespec="seconds"),
        "sections": list(sections),
        "settings": asdict(s),
        "gpu": gpu if "gpu" in sections else "not run",
        "metrics": run.metrics,
        "labels": run.labels,
        "targets": targets(run.metrics),
        "windows": run.windows,
        "errors": run.errors,
        "details": run.details,
    }


def write_report(path: str | Path, results: dict[str, Any], threads: int) -> Path:
    """Write the results file (with command, date and machine) and log each target's verdict."""
    written = write_results(path, results, threads=threads)
    for t in results["targets"]:
        log.info(
            "target %s: %s (limit %s) -> %s",
            t["key"],
            t["value"],
            t["limit"],
            verdict(t["holds"]).upper(),
        )
    return written
