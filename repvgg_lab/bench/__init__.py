"""Benchmarks: conversion speed, CPU latency, training-loop overhead and the GPU section.

Modules: `machine` (CPU accounting from /proc/stat), `settings` (run profiles), `keys` (every
metric name, defined once), the sections `convert`, `latency`, `train`, `gpu`, `branch_cost` and
`data_loading`, `result` and `run` (what a run collects, the targets, the results file),
`markdown` and `render` (the generated block of docs/benchmarks.md and the plot, from the results
file alone), `data_markdown` (docs/data.md's block, from a `--sections data` results file), and
`deploy_memory` with `deploy_memory_markdown` (deploy's peak memory as splits and calibration
grow, and docs/data.md's block on it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from repvgg_lab.bench.data_markdown import render_data_from_record
from repvgg_lab.bench.deploy_memory_markdown import render_deploy_memory_from_record
from repvgg_lab.bench.markdown import render_branch_cost_from_record, render_markdown_from_record

# Generated doc blocks of docs/benchmarks.md: key -> (results file in docs/results/, renderer
# of the whole record into the block's body).
DOC_BLOCKS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "benchmarks": ("benchmarks.json", render_markdown_from_record),
    "branch_cost": ("branch_cost.json", render_branch_cost_from_record),
    "data_loading": ("data.json", render_data_from_record),
    "deploy_memory": ("deploy_memory.json", render_deploy_memory_from_record),
    # The same measurement on the code before streaming (whole splits held in memory).
    "deploy_memory_before": ("deploy_memory_before.json", render_deploy_memory_from_record),
}

__all__ = ["DOC_BLOCKS", "render_markdown_from_record"]
