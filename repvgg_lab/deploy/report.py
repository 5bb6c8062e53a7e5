"""The deploy report: metric names, layout of report.json, and its console table (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table

from repvgg_lab.models import DriftReport
from repvgg_lab.models.drift import METRIC_NAMES

DRIFT_KEYS = tuple(f"drift/{name}" for name in METRIC_NAMES)
# Drift metrics that compare against the multi-branch net; undefined for a plain checkpoint.
_SOURCE_ONLY = {
    k for k in DRIFT_KEYS if k != "drift/vs_fp64/deploy_rel_max" and "underflow" not in k
}
LATENCY_COLUMNS = ("train", "deploy", "onnx")


def drift_metrics(drift: DriftReport, has_source: bool) -> dict[str, float | None]:
    """The stable drift names; the source-vs-plain ones are None when there is no source."""
    metrics: dict[str, float | None] = dict(drift.metrics())
    if not has_source:
        metrics.update(dict.fromkeys(_SOURCE_ONLY))
    return metrics


def latency_metrics(batch: int, results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """`latency/bs{batch}/{name}_ms` medians for one batch size."""
    return {f"latency/bs{batch}/{name}_ms": r["median_ms"] for name, r in results.items()}


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.3e}"


def render(report: dict[str, Any]) -> Group:
    """The report as console tables: conversion, checks, latency."""
    m, src, settings = report["metrics"], report["source"], report["settings"]
    conversion = Table(
        title=f"{src['model']} ({src['format']}, {src['num_classes']} classes)",
        caption=f"reference: {report['reference']}",
        header_style="bold",
    )
    conversion.add_column("")
    conversion.add_column("train (multi-branch)", justify="right")
    conversion.add_column("deploy (plain)", justify="right")
    for label, key in (
        ("parameters", "params/{}"),
        (f"MACs @{settings['input_size']}", "macs/{}"),
        ("max|err|/max|ref| vs float64", "drift/vs_fp64/{}_rel_max"),
    ):
        conversion.add_row(
            label, _fmt(m.get(key.format("train"))), _fmt(m.get(key.format("deploy")))
        )

    checks = Table(
        caption=f"tolerance {settings['tolerance']:g}; written to {report['out_dir']}",
        header_style="bold",
    )
    checks.add_column("metric")
    checks.add_column("value", justify="right")
    shown = {"drift/vs_fp64/train_rel_max", "drift/vs_fp64/deploy_rel_max"}
    others = sorted(k for k in m if k.startswith(("drift/", "onnx/", "verify/")))
    for key in dict.fromkeys([*DRIFT_KEYS, *others]):  # stable names first, no repeats
        if key not in shown:
            checks.add_row(key, _fmt(m.get(key)))

    parts: list[Any] = [conversion, checks]
    if settings["batch_sizes"]:
        latency = Table(title="CPU latency, median ms", header_style="bold")
        latency.add_column("batch", justify="right")
        for name in (*LATENCY_COLUMNS, "train/deploy"):
            latency.add_column(name, justify="right")
        for b in settings["batch_sizes"]:
            cells = [_fmt(m.get(f"latency/bs{b}/{name}_ms")) for name in LATENCY_COLUMNS]
            latency.add_row(str(b), *cells, _fmt(m.get(f"latency/bs{b}/speedup")))
        parts.append(latency)
    return Group(*parts)
