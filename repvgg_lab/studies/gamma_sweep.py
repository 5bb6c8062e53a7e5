"""The gamma-drift sweep (`python train.py -m sweep=gamma_drift`) as a table, a results record
and the summary docs/precision.md shows.

Every run folder under the sweep folder that holds a `metrics.json` becomes one row: `run`,
`init`, `gamma`, `seed` (from the run's `.hydra/config.yaml`, read with yaml), `underflow` (the
drift measurements whose float64 activations underflow their dtype), `zero_drift` (those whose
end-to-end drift is exactly 0: the output lost the input), every `drift/*` metric, and per-block
summaries from `drift_blocks.json` (`<prefix>/blocks/deploy_rel_max_median` and `..._max`)."""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import statistics
from pathlib import Path
from typing import Any

from repvgg_lab.errors import InputError
from repvgg_lab.studies.common import read_yaml, render_table, run_config, table

log = logging.getLogger(__name__)

TABLE = "drift_table.csv"
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
DTYPES = ("float32", "bfloat16", "tf32")
SUMMARY = (
    ("init fp32 e2e", "drift/init/vs_fp64/deploy_rel_max"),
    ("init fp32 floor", "drift/init/vs_fp64/train_rel_max"),
    ("init fp32 blocks", "drift/init/blocks/deploy_rel_max_median"),
    ("init underflow", "drift/init/underflow_frac"),
    ("fp32 e2e", "drift/vs_fp64/deploy_rel_max"),
    ("fp32 floor", "drift/vs_fp64/train_rel_max"),
    ("fp32 blocks", "drift/blocks/deploy_rel_max_median"),
    ("bf16 e2e", "drift/bfloat16/vs_fp64/deploy_rel_max"),
    ("bf16 blocks", "drift/bfloat16/blocks/deploy_rel_max_median"),
    ("bf16 top-1 agree", "drift/bfloat16/top1_agree"),
    ("tf32 e2e", "drift/tf32/vs_fp64/deploy_rel_max"),
)


class ReportError(InputError):
    """Bad input (missing folder, no runs): reported in one line."""


def split_prefix(prefix: str) -> tuple[str, str]:
    """'drift/init/bfloat16' -> ('init', 'bfloat16'); 'drift' -> ('trained', 'float32')."""
    parts = prefix.split("/")[1:]
    phase = "init" if parts[:1] == ["init"] else "trained"
    rest = parts[1:] if phase == "init" else parts
    return phase, rest[0] if rest else "float32"


def prefix_rank(prefix: str) -> tuple[bool, int, str]:
    """Sort key of metric prefixes: init before trained, then float32, bfloat16, tf32."""
    phase, dtype = split_prefix(prefix)
    return (phase == "trained", DTYPES.index(dtype) if dtype in DTYPES else len(DTYPES), dtype)


def _column_rank(key: str) -> tuple:
    for name in (*METRICS, *BLOCK_STATS):
        if key.endswith("/" + name):
            return (0, prefix_rank(key[: -len(name) - 1]), (*METRICS, *BLOCK_STATS).index(name))
    return (2, key)


def block_order(name: str) -> tuple:
    """Network order for block names: unnumbered ones (the stem) first, then numerically."""
    numbers = tuple(int(p) for p in re.split(r"(\d+)", name)[1::2])
    return (len(numbers) > 0, numbers, name)


def run_settings(run_dir: Path) -> dict[str, Any]:
    """init scheme, gamma and seed of a run: .hydra/config.yaml, else .hydra/overrides.yaml."""
    config = run_config(run_dir)
    init = config.get("init") or {}
    target = str(init.get("_target_", "")).rsplit(".", 1)[-1] or None
    out = {"init": target, "gamma": init.get("gamma"), "seed": config.get("seed")}
    for item in read_yaml(run_dir / ".hydra" / "overrides.yaml") or []:
        key, _, value = str(item).partition("=")
        if key.lstrip("+") == "init.gamma" and out["gamma"] is None:
            out["gamma"] = value
        elif key.lstrip("+") == "seed" and out["seed"] is None:
            out["seed"] = value
    for key, cast in (("gamma", float), ("seed", int)):
        try:
            out[key] = None if out[key] is None else cast(out[key])
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
    found = (
        key.removesuffix("/underflow_frac")
        for key, value in row.items()
        if key.endswith("/underflow_frac") and isinstance(value, float) and value > 0
    )
    return sorted(found, key=prefix_rank)


def zero_drift(row: dict[str, Any]) -> list[str]:
    """Prefixes whose plain net matches float64 exactly: the output has lost the input (e.g.
    logits equal to the classifier bias), which says nothing about the conversion."""
    suffix = "/vs_fp64/deploy_rel_max"
    found = (k.removesuffix(suffix) for k, v in row.items() if k.endswith(suffix) and v == 0.0)
    return sorted(found, key=prefix_rank)


def _read_json(path: Path, what: str) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        log.warning("%s: unreadable (%s); %s skipped", path, err, what)
        return None


def _row(sweep_dir: Path, run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"run": str(run_dir.relative_to(sweep_dir)), **run_settings(run_dir)}
    row.update(
        {k: float(v) for k, v in metrics.items() if k.startswith("drift/") and v is not None}
    )
    return row


def collect_runs(sweep_dir: Path) -> tuple[list[dict[str, Any]], dict[str, dict]]:
    """One row per run (settings, drift metrics, per-block summaries) and each run's blocks."""
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir}: no such sweep folder")
    rows, blocks = [], {}
    for metrics_path in sorted(sweep_dir.rglob("metrics.json")):
        run_dir = metrics_path.parent
        if "wandb" in run_dir.relative_to(sweep_dir).parts:
            continue
        metrics = _read_json(metrics_path, "run")
        if metrics is None:
            continue
        row = _row(sweep_dir, run_dir, metrics)
        blocks_path = run_dir / "drift_blocks.json"
        run_blocks = (
            (_read_json(blocks_path, "per-block numbers") or {}) if blocks_path.is_file() else {}
        )
        row.update(_block_summary(run_blocks))
        row["underflow"] = ";".join(underflowed(row))
        row["zero_drift"] = ";".join(zero_drift(row))
        rows.append(row)
        blocks[row["run"]] = run_blocks
    if not rows:
        raise ReportError(f"{sweep_dir}: no run folder with a metrics.json")
    for run_dir in sorted(p.parent for p in sweep_dir.rglob(".hydra")):
        if not (run_dir / "metrics.json").is_file():
            log.warning("%s has no metrics.json (failed or running)", run_dir)
    rows.sort(key=lambda r: (_num(r["gamma"]), _num(r["seed"]), r["run"]))
    return rows, blocks


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


def wall_seconds(sweep_dir: Path) -> float | None:
    """The sweep's wall time: multirun.yaml (written at the start) to the last metrics.json."""
    start = sweep_dir / "multirun.yaml"
    ends = [p.stat().st_mtime for p in sweep_dir.glob("*/metrics.json")]
    return max(ends) - start.stat().st_mtime if start.is_file() and ends else None


def shown(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The SUMMARY columns some run has."""
    return [(title, key) for title, key in SUMMARY if any(key in r for r in rows)]


def summary_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """gamma, seed, the shown SUMMARY values, underflow and zero-drift flags of every run."""
    keys = [key for _, key in shown(rows)]
    return [
        [row.get("gamma"), row.get("seed"), *(row.get(k) for k in keys)]
        + [row["underflow"] or "-", row["zero_drift"] or "-"]
        for row in rows
    ]


def summary_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary as a table record (raw numbers)."""
    metric_columns = [(t, "f3" if "top-1" in t else "e") for t, _ in shown(rows)]
    cols = [("gamma", "g"), ("seed", "s"), *metric_columns, ("underflow", "s"), ("zero drift", "s")]
    return table(cols, summary_rows(rows))


def summary(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of the headline numbers, one line per run."""
    record = summary_table(rows)
    md = render_table(record)
    lines = [[c.strip() for c in line.strip("|").split("|")] for line in [md[0], *md[2:]]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines
    )


def results(sweep_dir: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The results record of a sweep: its summary table, every run's row and its wall time."""
    return {
        "sweep": sweep_dir.name,
        "runs": len(rows),
        "wall_s": wall_seconds(sweep_dir),
        "summary": summary_table(rows),
        "rows": rows,
    }


def render_summary(record: dict[str, Any]) -> str:
    """Doc block: the sweep's summary table and how long the sweep took."""
    res = record["results"]
    wall = res.get("wall_s")
    took = f", {wall / 60:.1f} min wall" if wall is not None else ""
    cores = record["machine"].get("usable_cores")
    note = f"{res['runs']} runs{took} on {cores} CPU core(s); {record['date']}."
    return "\n".join([note, "", *render_table(res["summary"])])
