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
LATENCY_COLUMNS = ("train", "unpruned", "deploy", "onnx")
FILES = {
    "onnx": "model.onnx",
    "program": "model.pt2",
    "weights": "model.safetensors",
    "metrics": "metrics.json",
    "report": "report.json",  # moved last: its presence means the export is complete
}


def drift_metrics(drift: DriftReport, has_source: bool) -> dict[str, float | None]:
    """The stable drift names; the source-vs-plain ones are None when there is no source."""
    metrics: dict[str, float | None] = dict(drift.metrics())
    if not has_source:
        metrics.update(dict.fromkeys(_SOURCE_ONLY))
    return metrics


def latency_metrics(batch: int, results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """`latency/bs{batch}/{name}_ms` medians for one batch size."""
    return {f"latency/bs{batch}/{name}_ms": r["median_ms"] for name, r in results.items()}


def format_number(value: Any, sci_digits: int = 3) -> str:
    """A metric for the console: ints with thousands separators, floats in plain notation
    between 1e-3 and 1e5 and in scientific notation outside (never rounded to 0.0)."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.{sci_digits}e}"


def load_caption(load: dict[str, Any] | None) -> str:
    """How to read the latency table: the ratio column, the machine's load before timing, and
    a warning when it was busy (`repvgg_lab.utils.machine_load`)."""
    note = "train/deploy = ratio of the medians; "
    if not load or load.get("load_avg_1min") is None:
        return note + "load average unknown"
    note += (
        f"1-minute load average before timing {load['load_avg_1min']:.2f} on {load['cores']} cores"
    )
    if load["busy"]:
        return f"MACHINE BUSY, the times are not reliable (rerun on a quiet machine): {note}"
    return note


def _pruning_table(m: dict[str, Any], input_size: int) -> Table:
    """Before/after pruning: cost, batch-1 latency, and the deviation it caused."""
    exact = bool(m.get("prune/exact"))
    table = Table(
        title="channel pruning (" + ("exact" if exact else "lossy: fine-tune to recover") + ")",
        caption="deviation: pruned net vs the float64 reference, on the verification batch",
        header_style="bold",
    )
    for name, justify in (("", "left"), ("before", "right"), ("after", "right")):
        table.add_column(name, justify=justify)
    for label, key in (
        ("parameters", "prune/params_{}"),
        (f"MACs @{input_size}", "prune/macs_{}"),
        ("CPU latency bs1, median ms", "prune/latency_{}_ms"),
    ):
        table.add_row(
            label,
            format_number(m.get(key.format("before"))),
            format_number(m.get(key.format("after"))),
        )
    table.add_row("max|err|/max|ref|", "", format_number(m.get("prune/rel_max")))
    table.add_row("top-1 agreement", "", format_number(m.get("prune/top1_agree")))
    return table


def render(report: dict[str, Any]) -> Group:
    """The report as console tables: conversion, checks, latency."""
    m, src, settings = report["metrics"], report["source"], report["settings"]
    pruned = "prune/macs_after" in m
    caption = f"reference: {report['reference']}"
    if pruned:
        caption += "; deploy: cost after pruning, error of the conversion before it"
    conversion = Table(
        title=f"{src['model']} ({src['format']}, {src['num_classes']} classes"
        + (", EMA weights)" if src.get("weights") == "ema" else ")"),
        caption=caption,
        header_style="bold",
    )
    conversion.add_column("")
    conversion.add_column("train (multi-branch)", justify="right")
    conversion.add_column("deploy (plain, pruned)" if pruned else "deploy (plain)", justify="right")
    for label, key in (
        ("parameters", "params/{}"),
        (f"MACs @{settings['input_size']}", "macs/{}"),
        ("max|err|/max|ref| vs float64", "drift/vs_fp64/{}_rel_max"),
    ):
        conversion.add_row(
            label,
            format_number(m.get(key.format("train"))),
            format_number(m.get(key.format("deploy"))),
        )

    checks = Table(
        caption=f"tolerance {settings['tolerance']:g}; written to {report['out_dir']}",
        header_style="bold",
    )
    checks.add_column("metric")
    checks.add_column("value", justify="right")
    shown = {"drift/vs_fp64/train_rel_max", "drift/vs_fp64/deploy_rel_max"}
    others = sorted(k for k in m if k.startswith(("drift/", "onnx/", "verify/", "quant/")))
    for key in dict.fromkeys([*DRIFT_KEYS, *others]):  # stable names first, no repeats
        if key not in shown:
            checks.add_row(key, format_number(m.get(key)))

    parts: list[Any] = [conversion, checks]
    if pruned:
        parts.append(_pruning_table(m, settings["input_size"]))
    if settings["batch_sizes"]:
        parts.append(_latency_table(report, pruned))
    return Group(*parts)


def _latency_table(report: dict[str, Any], pruned: bool) -> Table:
    """Median latency of every net per batch size, with the machine's load before timing."""
    m = report["metrics"]
    table = Table(
        title="CPU latency, median ms",
        caption=load_caption(report.get("load")),
        header_style="bold",
    )
    table.add_column("batch", justify="right")
    # The unpruned column only when the deploy pruned (the others are always there or —).
    columns = [c for c in LATENCY_COLUMNS if c != "unpruned" or pruned]
    for name in (*columns, "train/deploy"):
        table.add_column(name, justify="right")
    for b in report["settings"]["batch_sizes"]:
        cells = [format_number(m.get(f"latency/bs{b}/{name}_ms")) for name in columns]
        table.add_row(str(b), *cells, format_number(m.get(f"latency/bs{b}/speedup")))
    return table
