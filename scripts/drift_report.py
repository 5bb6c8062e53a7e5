"""Turn a gamma-drift sweep (`python train.py -m sweep=gamma_drift`) into a table and plots.

    python scripts/drift_report.py outputs/gamma_drift/<time>

Every run folder under SWEEP_DIR that holds a `metrics.json` becomes one row of
`SWEEP_DIR/drift_table.csv`: `run`, `init`, `gamma`, `seed` (from the run's `.hydra/config.yaml`),
`underflow` (the drift measurements whose float64 activations underflow their dtype),
`zero_drift` (those whose end-to-end drift is exactly 0: the output lost the input), every
`drift/*` metric under its stable name, and per-block summaries read from `drift_blocks.json`
(`<prefix>/blocks/deploy_rel_max_median` and `..._max`: the plain net against float64, each block
fed unit-scale input). Plots, also in SWEEP_DIR:

* `drift_vs_gamma.png`: relative drift against float64 vs init gamma, at init and after training,
  per dtype, with the fp32 noise floor (the multi-branch fp32 net's own error against float64, and
  fp32's machine epsilon). Drift measured on underflowed activations is ringed in red; a drift of
  exactly 0 (the logits have lost the input) is drawn at the bottom edge as a down-triangle.
* `drift_blocks.png`: per-block drift against float64, one line per gamma (median over seeds).

A summary is printed to stdout; rows with underflow get a warning, because their end-to-end
drift is an artefact of values fp32 cannot hold, not a property of the conversion.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: works on machines without a display
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

TABLE = "drift_table.csv"
PLOT_GAMMA = "drift_vs_gamma.png"
PLOT_BLOCKS = "drift_blocks.png"
# DESIGN.md metric names, in this order within each prefix.
METRICS = (
    "max_abs",
    "rel_max",
    "top1_agree",
    "vs_fp64/train_rel_max",
    "vs_fp64/deploy_rel_max",
    "underflow_frac",
)
BLOCK_STATS = ("blocks/deploy_rel_max_median", "blocks/deploy_rel_max_max")
EPS = {"float32": 2.0**-23, "bfloat16": 2.0**-7, "tf32": 2.0**-10, "float16": 2.0**-10}
COLORS = {"float32": "tab:blue", "bfloat16": "tab:orange", "tf32": "tab:green"}


class ReportError(Exception):
    """Bad input (missing folder, no runs): reported in one line."""


def split_prefix(prefix: str) -> tuple[str, str]:
    """'drift/init/bfloat16' -> ('init', 'bfloat16'); 'drift' -> ('trained', 'float32')."""
    parts = prefix.split("/")[1:]
    phase = "init" if parts[:1] == ["init"] else "trained"
    rest = parts[1:] if phase == "init" else parts
    return phase, rest[0] if rest else "float32"


def _prefix_rank(prefix: str) -> tuple[int, int, str]:
    phase, dtype = split_prefix(prefix)
    order = list(COLORS)
    return (phase == "trained", order.index(dtype) if dtype in order else len(order), dtype)


def _metric_prefix(key: str) -> tuple[str, str] | None:
    """'drift/init/vs_fp64/train_rel_max' -> ('drift/init', 'vs_fp64/train_rel_max')."""
    for name in (*METRICS, *BLOCK_STATS):
        if key.endswith("/" + name):
            return key[: -len(name) - 1], name
    return None


def _column_rank(key: str) -> tuple:
    split = _metric_prefix(key)
    if split is None:
        return (2, key)
    prefix, name = split
    names = (*METRICS, *BLOCK_STATS)
    return (0, _prefix_rank(prefix), names.index(name))


def block_order(name: str) -> tuple:
    """Network order for block names: unnumbered ones (the stem) first, then numerically."""
    parts = re.split(r"(\d+)", name)
    numbers = tuple(int(p) for p in parts[1::2])
    return (len(numbers) > 0, numbers, name)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def run_settings(run_dir: Path) -> dict[str, Any]:
    """init scheme, gamma and seed of a run: .hydra/config.yaml, else .hydra/overrides.yaml."""
    config = _read_yaml(run_dir / ".hydra" / "config.yaml") or {}
    init = config.get("init") or {}
    target = str(init.get("_target_", "")).rsplit(".", 1)[-1] or None
    out = {"init": target, "gamma": init.get("gamma"), "seed": config.get("seed")}
    for item in _read_yaml(run_dir / ".hydra" / "overrides.yaml") or []:
        key, _, value = str(item).partition("=")
        if key.lstrip("+") == "init.gamma" and out["gamma"] is None:
            out["gamma"] = value
        elif key.lstrip("+") == "seed" and out["seed"] is None:
            out["seed"] = value
    for key, cast in (("gamma", float), ("seed", int)):
        if out[key] is not None:
            try:
                out[key] = cast(out[key])
            except (TypeError, ValueError):
                out[key] = None
    return out


def _block_summary(blocks: dict[str, Any]) -> dict[str, float]:
    out = {}
    for prefix, per_block in blocks.items():
        values = [v["deploy_rel_max"] for v in per_block.values() if "deploy_rel_max" in v]
        if values:
            out[f"{prefix}/blocks/deploy_rel_max_median"] = statistics.median(values)
            out[f"{prefix}/blocks/deploy_rel_max_max"] = max(values)
    return out


def underflowed(row: dict[str, Any]) -> list[str]:
    """Prefixes ('drift/init', ...) whose underflow fraction is above zero."""
    return sorted(
        (
            key.removesuffix("/underflow_frac")
            for key, value in row.items()
            if key.endswith("/underflow_frac") and isinstance(value, float) and value > 0
        ),
        key=_prefix_rank,
    )


def zero_drift(row: dict[str, Any]) -> list[str]:
    """Prefixes whose plain net matches float64 exactly: the output has lost the input (e.g.
    logits equal to the classifier bias), which says nothing about the conversion."""
    suffix = "/vs_fp64/deploy_rel_max"
    return sorted(
        (k.removesuffix(suffix) for k, v in row.items() if k.endswith(suffix) and v == 0.0),
        key=_prefix_rank,
    )


def collect_runs(sweep_dir: Path) -> tuple[list[dict[str, Any]], dict[str, dict]]:
    """One row per run (settings, drift metrics, per-block summaries) and each run's blocks."""
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir}: no such sweep folder")
    rows, blocks = [], {}
    for metrics_path in sorted(sweep_dir.rglob("metrics.json")):
        run_dir = metrics_path.parent
        if "wandb" in run_dir.relative_to(sweep_dir).parts:
            continue
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            print(f"warning: {metrics_path}: unreadable ({err}); skipped", file=sys.stderr)
            continue
        name = str(run_dir.relative_to(sweep_dir))
        row: dict[str, Any] = {"run": name, **run_settings(run_dir)}
        row.update(
            {k: float(v) for k, v in metrics.items() if k.startswith("drift/") and v is not None}
        )
        blocks_path = run_dir / "drift_blocks.json"
        run_blocks = _read_json(blocks_path) if blocks_path.is_file() else {}
        row.update(_block_summary(run_blocks))
        row["underflow"] = ";".join(underflowed(row))
        row["zero_drift"] = ";".join(zero_drift(row))
        rows.append(row)
        blocks[name] = run_blocks
    if not rows:
        raise ReportError(f"{sweep_dir}: no run folder with a metrics.json")
    for run_dir in sorted(p.parent for p in sweep_dir.rglob(".hydra")):
        if not (run_dir / "metrics.json").is_file():
            print(f"warning: {run_dir} has no metrics.json (failed or running)", file=sys.stderr)
    rows.sort(key=lambda r: (_num(r["gamma"]), _num(r["seed"]), r["run"]))
    return rows, blocks


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        print(f"warning: {path}: unreadable; per-block numbers skipped", file=sys.stderr)
        return {}


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.inf


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """Fixed leading columns, then every metric column any run has, in a stable order."""
    keys = {k for row in rows for k in row if k.startswith("drift/")}
    lead = ["run", "init", "gamma", "seed", "underflow", "zero_drift"]
    return [*lead, *sorted(keys, key=_column_rank)]


def write_table(rows: list[dict[str, Any]], path: Path) -> list[str]:
    """drift_table.csv; a metric a run lacks is an empty cell."""
    header = columns(rows)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in header})
    return header


# --- plots ----------------------------------------------------------------------------------


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float], list[bool]]:
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


def _prefixes(rows: list[dict[str, Any]], phase: str) -> list[str]:
    found = {
        key.split("/vs_fp64/")[0]
        for row in rows
        for key in row
        if key.endswith("/vs_fp64/deploy_rel_max")
    }
    return sorted((p for p in found if split_prefix(p)[0] == phase), key=_prefix_rank)


def figure_vs_gamma(rows: list[dict[str, Any]]) -> plt.Figure:
    """Relative drift against float64 vs gamma, at init and after training."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    positive = [
        v
        for row in rows
        for k, v in row.items()
        if k.startswith("drift/") and "rel_max" in k and isinstance(v, float) and v > 0
    ]
    floor = min(positive) / 10 if positive else 1e-9
    for ax, phase in zip(axes, ("init", "trained"), strict=True):
        for prefix in _prefixes(rows, phase):
            dtype = split_prefix(prefix)[1]
            color = COLORS.get(dtype, "tab:purple")
            for key, style, label in (
                (f"{prefix}/vs_fp64/deploy_rel_max", "o-", "plain vs fp64"),
                (
                    f"{prefix}/blocks/deploy_rel_max_median",
                    "s--",
                    "per-block median, plain vs fp64",
                ),
            ):
                gammas, values, flags = _series(rows, key)
                if not gammas:
                    continue
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
                    ax.scatter(
                        *zip(*bad, strict=True),
                        s=160,
                        facecolors="none",
                        edgecolors="red",
                        linewidths=1.5,
                        label="underflow (artefact)" if dtype == "float32" else None,
                    )
        gammas, values, _ = _series(
            rows, f"drift{'/init' if phase == 'init' else ''}/vs_fp64/train_rel_max"
        )
        if gammas:
            xs, med = _median_by_gamma(gammas, [v if v > 0 else floor for v in values])
            ax.plot(
                xs, med, ":", color="black", label="fp32 noise floor: multi-branch fp32 vs fp64"
            )
        ax.axhline(EPS["float32"], color="grey", ls="-.", lw=0.8, label="fp32 epsilon 2^-23")
        if any(split_prefix(p)[1] == "bfloat16" for p in _prefixes(rows, phase)):
            ax.axhline(
                EPS["bfloat16"], color="tab:orange", ls="-.", lw=0.8, label="bf16 epsilon 2^-7"
            )
        ax.axhline(floor, color="lightgrey", lw=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("init gamma (every branch BN)")
        ax.set_title("at init" if phase == "init" else "after training")
        ax.grid(True, which="both", alpha=0.2)
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


def _save(fig: plt.Figure, path: Path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_blocks(rows: list[dict[str, Any]], blocks: dict[str, dict]) -> plt.Figure:
    """Per-block drift of the plain net against float64, one line per gamma, per phase/dtype."""
    prefixes = sorted({p for run in blocks.values() for p in run}, key=_prefix_rank)
    dtypes = sorted(
        {split_prefix(p)[1] for p in prefixes}, key=lambda d: _prefix_rank("drift/" + d)
    )
    dtypes = dtypes or ["float32"]
    fig, axes = plt.subplots(len(dtypes), 2, figsize=(12, 3.6 * len(dtypes)), squeeze=False)
    gammas = sorted({r["gamma"] for r in rows if r.get("gamma") is not None})
    cmap = plt.get_cmap("viridis")
    for i, dtype in enumerate(dtypes):
        for j, phase in enumerate(("init", "trained")):
            ax = axes[i][j]
            prefix = "/".join(
                p
                for p in (
                    "drift",
                    "init" if phase == "init" else "",
                    "" if dtype == "float32" else dtype,
                )
                if p
            )
            for k, gamma in enumerate(gammas):
                per_block: dict[str, list[float]] = defaultdict(list)
                for row in rows:
                    if row.get("gamma") != gamma:
                        continue
                    for name, values in blocks.get(row["run"], {}).get(prefix, {}).items():
                        per_block[name].append(values["deploy_rel_max"])
                if not per_block:
                    continue
                names = sorted(per_block, key=block_order)
                ys = [max(statistics.median(per_block[n]), 1e-12) for n in names]
                color = cmap(k / max(1, len(gammas) - 1))
                ax.plot(range(len(names)), ys, "o-", ms=3, color=color, label=f"gamma={gamma:g}")
            ax.axhline(
                EPS.get(dtype, EPS["float32"]),
                color="grey",
                ls="-.",
                lw=0.8,
                label=f"{dtype} epsilon",
            )
            ax.set_yscale("log")
            ax.set_xlabel("block (network order, stem = 0)")
            ax.set_ylabel("plain vs fp64, relative")
            ax.set_title(f"{dtype}, {'at init' if phase == 'init' else 'after training'}")
            ax.grid(True, which="both", alpha=0.2)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# --- summary --------------------------------------------------------------------------------

SUMMARY = (
    ("init fp32 e2e", "drift/init/vs_fp64/deploy_rel_max"),
    ("init fp32 blocks", "drift/init/blocks/deploy_rel_max_median"),
    ("init underflow", "drift/init/underflow_frac"),
    ("fp32 e2e", "drift/vs_fp64/deploy_rel_max"),
    ("fp32 floor", "drift/vs_fp64/train_rel_max"),
    ("fp32 blocks", "drift/blocks/deploy_rel_max_median"),
    ("bf16 e2e", "drift/bfloat16/vs_fp64/deploy_rel_max"),
    ("tf32 e2e", "drift/tf32/vs_fp64/deploy_rel_max"),
)


def summary(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of the headline numbers, one line per run."""
    shown = [(title, key) for title, key in SUMMARY if any(key in r for r in rows)]
    head = ["gamma", "seed", *(t for t, _ in shown), "underflow", "zero drift"]
    lines = [head]
    for row in rows:
        cells = [
            "-" if row.get("gamma") is None else f"{row['gamma']:g}",
            "-" if row.get("seed") is None else str(row["seed"]),
        ]
        cells += ["-" if row.get(k) is None else f"{row[k]:.2e}" for _, k in shown]
        cells += [row["underflow"] or "-", row["zero_drift"] or "-"]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines
    )


def report(sweep_dir: Path) -> list[dict[str, Any]]:
    """Write the table and both plots into `sweep_dir`; return the rows."""
    rows, blocks = collect_runs(sweep_dir)
    write_table(rows, sweep_dir / TABLE)
    _save(figure_vs_gamma(rows), sweep_dir / PLOT_GAMMA)
    _save(figure_blocks(rows, blocks), sweep_dir / PLOT_BLOCKS)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="the multirun folder (hydra.sweep.dir)")
    args = parser.parse_args(argv)
    try:
        rows = report(args.sweep_dir)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary(rows))
    for row in rows:
        if row["underflow"]:
            print(
                f"warning: {row['run']}: activations underflow in {row['underflow']}: that "
                "end-to-end drift is an artefact (values the dtype cannot hold); read the "
                "per-block columns",
                file=sys.stderr,
            )
        if row["zero_drift"]:
            print(
                f"note: {row['run']}: end-to-end drift is exactly 0 in {row['zero_drift']}: the "
                "output no longer depends on the input's path through the net (logits = bias), "
                "not a sign of exactness; read the per-block columns",
                file=sys.stderr,
            )
    for name in (TABLE, PLOT_GAMMA, PLOT_BLOCKS):
        print(f"wrote {args.sweep_dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
