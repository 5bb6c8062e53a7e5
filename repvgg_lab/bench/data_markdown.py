"""The generated block of docs/data.md, rendered from a `--sections data` results file alone:
loader images/s per tree, transform and worker count, and how many workers a GPU needs."""

from __future__ import annotations

import math
from typing import Any

from repvgg_lab.bench import keys as k
from repvgg_lab.bench.markdown import _f, _table, _window_note, flat_report, pct
from repvgg_lab.bench.result import targets, verdict

BLOCK = "data_loading"
TARGET_KEY = k.data_ratio_key("resized_time_over_full", "train", 0)
# What one GPU consumes when training at 224 px (images/s), published, until the project's GPU
# check measures it: timm's benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv (one RTX 3090,
# AMP). Neither model is in it; each figure is that of a larger sibling, so a lower bound.
DEMAND = (
    ("repvgg_a0", 1010.0, "timm: RepVGG-A2 on one RTX 3090, AMP (A0 is smaller: at least this)"),
    (
        "repvgg_b2g4",
        335.0,
        "timm: RepVGG-B2 on one RTX 3090, AMP (B2g4 does fewer FLOPs: at least this)",
    ),
)


def _trees(s: dict[str, Any]) -> tuple[str, str]:
    """The full-size tree and its pre-resized copy, by name."""
    return k.FULL_TREE, k.resized_tree(s["data_max_side"])


def _conditions(report: dict[str, Any]) -> list[str]:
    """When, with what command and on which machine the block was measured."""
    mc, run = report["machine"], report["windows"].get(k.RUN, {})
    return [
        f"Measured {report['created']} with `{report['command']}`: {mc['cpu']}, "
        f"{mc['logical_cores']} cores, torch {mc['torch']}, timm {mc['timm']}; other processes "
        f"used {pct(run.get('foreign_share'))} of the CPU during the run, which took "
        f"{_f(run.get('wall_s'))} s.",
        "",
    ]


def _tree_line(report: dict[str, Any]) -> list[str]:
    """What the generated tree and its copy hold."""
    m, s = report["metrics"], report["settings"]
    full, resized = _trees(s)

    def files(tree: str) -> str:
        return (
            f"mean {m[k.data_tree_key(tree, 'mean_width')]:.0f}×"
            f"{m[k.data_tree_key(tree, 'mean_height')]:.0f} px, "
            f"{m[k.data_tree_key(tree, 'mean_kb')]:.0f} kB"
        )

    return [
        f"Generated tree: {m[k.data_tree_key(full, 'images')]:.0f} JPEGs at quality "
        f"{s['data_quality']} ({s['data_classes']} classes × ({s['data_train_per_class']} train "
        f"+ {s['data_val_per_class']} val)), {files(full)}. Pre-resized copy (`{resized}`, max "
        f"side {s['data_max_side']}): {files(resized)}, longest side "
        f"{m[k.data_tree_key(resized, 'max_side')]:.0f} px; `resize_imagefolder` wrote it at "
        f"{_f(m[k.DATA_RESIZE_RATE])} images/s with {_count(m[k.DATA_RESIZE_WORKERS], 'process')}.",
        "",
    ]


def _count(n: float, noun: str) -> str:
    """ "1 worker", "2 workers", "1 process", "3 processes"."""
    plural = "es" if noun.endswith("s") else "s"
    return f"{n:.0f} {noun}{'' if n == 1 else plural}"


def _workers_label(w: int) -> str:
    """A worker count as a column title."""
    return "main process (0 workers)" if w == 0 else _count(w, "worker")


def _throughput(report: dict[str, Any]) -> list[str]:
    """Images/s per tree and transform (rows) and worker count (columns), with the speedups."""
    m, s = report["metrics"], report["settings"]
    workers, rows = s["data_workers"], []
    for transform in k.DATA_TRANSFORMS:
        for tree in _trees(s):
            cells = [_f(m.get(k.data_key(tree, transform, w))) for w in workers]
            rows.append([tree, transform, *cells])
        speedups = [m.get(k.data_ratio_key("resized_speedup", transform, w)) for w in workers]
        rows.append(["resized / full", transform, *(f"**{_f(v)}×**" for v in speedups)])
        notes = [_window_note(report, k.data_window(transform, w)) for w in workers]
        rows.append(["other processes' CPU", transform, *notes])
    title = (
        f"### Images/s from `ImageNetDataModule`'s DataLoader ({s['data_img_size']} px, batch "
        f"{s['data_batch']})"
    )
    note = (
        f"Median over {_count(s['data_rounds'], 'epoch')} after {s['data_warmup']} untimed; the "
        "two trees' loaders alternate epoch by epoch; resized / full is the median of the "
        "per-epoch ratios."
    )
    header = ["tree", "transform", *(_workers_label(w) for w in workers)]
    return [title, "", note, "", *_table(header, rows)]


def _target_line(report: dict[str, Any]) -> list[str]:
    """The data section's target and its verdict."""
    for t in targets(report["metrics"]):
        if t["key"] == TARGET_KEY:
            return [
                f"Target: {t['target']} ≤ {t['limit']} (a speedup of at least "
                f"{1 / t['limit']:g}×): measured {_f(t['value'])}, **{verdict(t['holds'])}**.",
                "",
            ]
    return []


def workers_needed(demand: float, rate: float | None) -> int | None:
    """Loader workers that deliver `demand` images/s at `rate` per worker (None: not measured)."""
    if rate is None or not math.isfinite(rate) or rate <= 0:
        return None
    return math.ceil(demand / rate)


def _needed(report: dict[str, Any]) -> list[str]:
    """Per model and tree: images/s per worker at each worker count and the workers needed."""
    m, s = report["metrics"], report["settings"]
    counts = [w for w in s["data_workers"] if w > 0]
    rows = []
    for model, demand, _ in DEMAND:
        for tree in _trees(s):
            cells = []
            for w in counts:
                rate = m.get(k.data_key(tree, "train", w))
                per_worker = None if rate is None else rate / w
                needed = workers_needed(demand, per_worker)
                cells += [_f(per_worker), "—" if needed is None else f"**{needed}**"]
            rows.append([model, f"≥ {demand:,.0f}", tree, *cells])
    header = ["model", "GPU demand, images/s", "tree"]
    for w in counts:
        header += [f"images/s per worker ({_workers_label(w)})", "workers needed"]
    sources = [f"- {model}: {source}." for model, _, source in DEMAND]
    return [
        "### Loader workers one GPU needs (training transform)",
        "",
        "Workers needed = GPU demand ÷ (measured images/s ÷ workers), rounded up.",
        "",
        *_table(header, rows),
        "Demand figures (published, until the GPU check measures them here):",
        "",
        *sources,
        "",
    ]


def render_data_markdown(report: dict[str, Any]) -> str:
    """The body of docs/data.md's generated block from a flat report (`flat_report`)."""
    lines = ["## Measured on this machine", "", *_conditions(report), *_tree_line(report)]
    lines += _throughput(report) + _target_line(report) + _needed(report)
    if report["errors"]:
        lines += ["### Errors recorded", ""]
        lines += [f"- `{key}`: {v}" for key, v in sorted(report["errors"].items())] + [""]
    return "\n".join(lines).strip("\n")


def render_data_from_record(record: dict[str, Any]) -> str:
    """The block's body from a whole results-file record (as `read_results` loads it)."""
    return render_data_markdown(flat_report(record))
