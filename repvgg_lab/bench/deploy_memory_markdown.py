"""The generated block of docs/data.md's deploy section, from `scripts/deploy_memory.py`'s results
file alone: each deploy's peak RSS, wall time and image counts, and each growth's verdict."""

from __future__ import annotations

from typing import Any

from repvgg_lab.results import markdown_table

BLOCK = "deploy_memory"
LABELS = {
    "base": "1×",
    "val_large": "4× validation images",
    "calibration_large": "4× calibration batches",
    "percentile_base": "1×, percentile",
    "percentile_calibration_large": "4× calibration batches, percentile",
}


def _count(value: Any) -> str:
    """An image count, or a dash where the run did not record it."""
    return "–" if value is None else f"{int(value):,}"


def _verdict(ok: bool) -> str:
    return "holds" if ok else "**missed**"


def render_deploy_memory_from_record(record: dict[str, Any]) -> str:
    """The block's body from a whole results-file record (as `read_results` loads it)."""
    results, machine = record["results"], record["machine"]
    s, runs = results["settings"], results["runs"]
    lines = [
        f"Measured {record['date']} with `{record['command']}` on {machine['cpu']} "
        f"({machine['logical_cores']} cores, {s['threads']} threads per deploy, "
        f"overrides: {' '.join(s['overrides']) or 'none'}); {s['model']} ({s['classes']} "
        f"classes) deployed at {s['input_size']} px, `verify.batch={s['verify_batch']}`.",
        "",
    ]
    rows = []
    for name, run in runs.items():
        m = run["metrics"]
        rows.append(
            [
                LABELS.get(name, name),
                run["method"],
                _count(run["val_images"]),
                run["calibration_batches"],
                _count(m.get("quant/int8/images")),
                _count(m.get("quant/int8/calibration_images")),
                f"{run['peak_rss_mib']:,.0f}",
                f"{run['wall_s']:.1f}",
            ]
        )
    header = [
        "deploy",
        "calibration",
        "validation images",
        "calibration batches",
        "`quant/int8/images`",
        "`quant/int8/calibration_images`",
        "peak RSS (MiB)",
        "wall (s)",
    ]
    lines += markdown_table(header, rows)
    lines.append("")
    for name, r in results["ratios"].items():
        lines.append(
            f"- {LABELS.get(name, name)} over {LABELS.get(r['over'], r['over'])}: peak RSS "
            f"×{r['rss_ratio']:.2f} (limit ×{r['rss_limit']:.2f}: {_verdict(r['rss_growth_ok'])}),"
            f" wall time ×{r['wall_ratio']:.2f} for ×{r['factor']:.0f} the work (limit "
            f"×{r['wall_limit']:.1f}: {_verdict(r['time_linear_ok'])})."
        )
    return "\n".join(lines)
