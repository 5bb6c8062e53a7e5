"""The gamma sweep's plots: drift against init gamma, and drift per block.

* `drift_vs_gamma.png`: relative drift against float64 vs init gamma, at init and after training,
  per dtype, with the fp32 noise floor (the multi-branch fp32 net's own error against float64, and
  fp32's machine epsilon). Drift measured on underflowed activations is ringed in red; a drift of
  exactly 0 (the logits have lost the input) is drawn at the bottom edge as a down-triangle.
* `drift_blocks.png`: per-block drift against float64, one line per gamma (median over seeds)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: works on machines without a display
import matplotlib.pyplot as plt  # noqa: E402

from repvgg_lab.studies.gamma_sweep import block_order, prefix_rank, split_prefix  # noqa: E402

PLOT_GAMMA = "drift_vs_gamma.png"
PLOT_BLOCKS = "drift_blocks.png"
EPS = {"float32": 2.0**-23, "bfloat16": 2.0**-7, "tf32": 2.0**-10, "float16": 2.0**-10}
COLORS = {"float32": "tab:blue", "bfloat16": "tab:orange", "tf32": "tab:green"}
Rows = list[dict[str, Any]]


def _series(rows: Rows, key: str) -> tuple[list[float], list[float], list[bool]]:
    """(gammas, values, underflow flags) of the rows that have `key` and a gamma."""
    gammas, values, flags = [], [], []
    prefix = key.split("/vs_fp64/")[0].split("/blocks/")[0]
    for row in rows:
        if row.get("gamma") is None or row.get(key) is None:
            continue
        gammas.append(float(row["gamma"]))
        values.append(float(row[key]))
        flags.append(prefix in row["underflow"].split(";"))
    return gammas, values, flags


def _median_by_gamma(gammas: list[float], values: list[float]) -> tuple[list[float], list[float]]:
    grouped: dict[float, list[float]] = defaultdict(list)
    for g, v in zip(gammas, values, strict=True):
        grouped[g].append(v)
    xs = sorted(grouped)
    return xs, [statistics.median(grouped[x]) for x in xs]


def _prefixes(rows: Rows, phase: str) -> list[str]:
    suffix = "/vs_fp64/deploy_rel_max"
    found = {key.split("/vs_fp64/")[0] for row in rows for key in row if key.endswith(suffix)}
    return sorted((p for p in found if split_prefix(p)[0] == phase), key=prefix_rank)


def _floor(rows: Rows) -> float:
    positive = [
        v
        for row in rows
        for k, v in row.items()
        if k.startswith("drift/") and "rel_max" in k and isinstance(v, float) and v > 0
    ]
    return min(positive) / 10 if positive else 1e-9


def _plot_series(ax: plt.Axes, rows: Rows, key: str, style: str, label: str, floor: float) -> None:
    """One dtype's points, exact zeros, median line and underflow rings."""
    gammas, values, flags = _series(rows, key)
    if not gammas:
        return
    dtype = split_prefix(key.split("/vs_fp64/")[0].split("/blocks/")[0])[1]
    color = COLORS.get(dtype, "tab:purple")
    shown = [v if v > 0 else floor for v in values]
    ax.scatter(gammas, shown, color=color, marker=style[0], s=22, alpha=0.6)
    zeros = [(g, floor) for g, v in zip(gammas, values, strict=True) if v == 0]
    if zeros:
        ax.scatter(*zip(*zeros, strict=True), color=color, marker="v", s=60)
    xs, med = _median_by_gamma(gammas, shown)
    ax.plot(xs, med, style[1:], color=color, label=f"{dtype}: {label}")
    # Per-block inputs are unit-scale: only end-to-end numbers suffer underflow.
    bad = [(g, s) for g, s, f in zip(gammas, shown, flags, strict=True) if f]
    if bad and "/blocks/" not in key:
        label = "underflow (artefact)" if dtype == "float32" else None
        ring = {"s": 160, "facecolors": "none", "edgecolors": "red", "linewidths": 1.5}
        ax.scatter(*zip(*bad, strict=True), label=label, **ring)


def _plot_phase(ax: plt.Axes, rows: Rows, phase: str, floor: float) -> None:
    """One panel: every dtype's drift vs gamma, the fp32 noise floor and the epsilons."""
    for prefix in _prefixes(rows, phase):
        _plot_series(ax, rows, f"{prefix}/vs_fp64/deploy_rel_max", "o-", "plain vs fp64", floor)
        block_key = f"{prefix}/blocks/deploy_rel_max_median"
        _plot_series(ax, rows, block_key, "s--", "per-block median, plain vs fp64", floor)
    key = f"drift{'/init' if phase == 'init' else ''}/vs_fp64/train_rel_max"
    gammas, values, _ = _series(rows, key)
    if gammas:
        xs, med = _median_by_gamma(gammas, [v if v > 0 else floor for v in values])
        ax.plot(xs, med, ":", color="black", label="fp32 noise floor: multi-branch fp32 vs fp64")
    ax.axhline(EPS["float32"], color="grey", ls="-.", lw=0.8, label="fp32 epsilon 2^-23")
    if any(split_prefix(p)[1] == "bfloat16" for p in _prefixes(rows, phase)):
        ax.axhline(EPS["bfloat16"], color="tab:orange", ls="-.", lw=0.8, label="bf16 epsilon 2^-7")
    ax.axhline(floor, color="lightgrey", lw=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("init gamma (every branch BN)")
    ax.set_title("at init" if phase == "init" else "after training")
    ax.grid(True, which="both", alpha=0.2)


def figure_vs_gamma(rows: Rows) -> plt.Figure:
    """Relative drift against float64 vs gamma, at init and after training."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    floor = _floor(rows)
    for ax, phase in zip(axes, ("init", "trained"), strict=True):
        _plot_phase(ax, rows, phase, floor)
    axes[0].set_ylabel("relative drift max|d| / max|fp64|  (v: exactly 0)")
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig


def _blocks_panel(ax: plt.Axes, rows: Rows, blocks: dict[str, dict], prefix: str) -> None:
    """Per-block drift for one prefix, one line per gamma (median over seeds)."""
    gammas = sorted({r["gamma"] for r in rows if r.get("gamma") is not None})
    cmap = plt.get_cmap("viridis")
    for k, gamma in enumerate(gammas):
        per_block: dict[str, list[float]] = defaultdict(list)
        for row in (r for r in rows if r.get("gamma") == gamma):
            for name, values in blocks.get(row["run"], {}).get(prefix, {}).items():
                per_block[name].append(values["deploy_rel_max"])
        if per_block:
            names = sorted(per_block, key=block_order)
            ys = [max(statistics.median(per_block[n]), 1e-12) for n in names]
            color = cmap(k / max(1, len(gammas) - 1))
            ax.plot(range(len(names)), ys, "o-", ms=3, color=color, label=f"gamma={gamma:g}")


def figure_blocks(rows: Rows, blocks: dict[str, dict]) -> plt.Figure:
    """Per-block drift of the plain net against float64, one line per gamma, per phase/dtype."""
    prefixes = sorted({p for run in blocks.values() for p in run}, key=prefix_rank)
    dtypes = sorted({split_prefix(p)[1] for p in prefixes}, key=lambda d: prefix_rank(f"drift/{d}"))
    dtypes = dtypes or ["float32"]
    fig, axes = plt.subplots(len(dtypes), 2, figsize=(12, 3.6 * len(dtypes)), squeeze=False)
    for i, dtype in enumerate(dtypes):
        for j, phase in enumerate(("init", "trained")):
            ax = axes[i][j]
            parts = (
                "drift",
                "init" if phase == "init" else "",
                "" if dtype == "float32" else dtype,
            )
            _blocks_panel(ax, rows, blocks, "/".join(p for p in parts if p))
            eps = EPS.get(dtype, EPS["float32"])
            ax.axhline(eps, color="grey", ls="-.", lw=0.8, label=f"{dtype} epsilon")
            ax.set_yscale("log")
            ax.set_xlabel("block (network order, stem = 0)")
            ax.set_ylabel("plain vs fp64, relative")
            ax.set_title(f"{dtype}, {'at init' if phase == 'init' else 'after training'}")
            ax.grid(True, which="both", alpha=0.2)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save_plots(rows: Rows, blocks: dict[str, dict], folder: Path) -> list[Path]:
    """Write both plots into `folder`."""
    paths = []
    for fig, name in (
        (figure_vs_gamma(rows), PLOT_GAMMA),
        (figure_blocks(rows, blocks), PLOT_BLOCKS),
    ):
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        paths.append(folder / name)
    return paths
