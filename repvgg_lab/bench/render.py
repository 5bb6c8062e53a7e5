"""docs/benchmarks.md's generated block and docs/benchmarks.png, rewritten from a results file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from repvgg_lab.bench import keys as k
from repvgg_lab.bench.data_markdown import BLOCK as DATA_BLOCK
from repvgg_lab.bench.data_markdown import render_data_markdown
from repvgg_lab.bench.markdown import flat_report, latency_cases, pct, render_markdown
from repvgg_lab.fileio import atomic_write
from repvgg_lab.results import generated_blocks, read_results, replace_generated

BLOCK = "benchmarks"
BLOCK_TEMPLATE = "<!-- BEGIN GENERATED: {key} -->\n{body}\n<!-- END GENERATED: {key} -->\n"
DOC_HEAD = """# Benchmarks

`python scripts/bench.py --quick --out docs/results/benchmarks.json` measures; `python
scripts/bench.py --render docs/results/benchmarks.json` rewrites the generated block of this file
(and docs/benchmarks.png) from that JSON alone.

"""


def render_plot(report: dict[str, Any], path: Path) -> None:
    """Grouped bars: each runtime's latency relative to the plain eager net, per model/batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, cases = report["metrics"], latency_cases(report)
    batches = sorted({b for _, b in cases})
    fig, axes = plt.subplots(
        1, max(1, len(batches)), figsize=(5.5 * max(1, len(batches)), 4), squeeze=False
    )
    width = 0.8 / len(k.VARIANTS)
    for ax, batch in zip(axes[0], batches, strict=False):
        models = [name for name, b in cases if b == batch]
        for i, v in enumerate(k.VARIANTS):
            ratios = [
                1.0 if v == k.BASELINE else m.get(k.ratio_key(name, batch, v), 0.0)
                for name in models
            ]
            xs = [j + (i - (len(k.VARIANTS) - 1) / 2) * width for j in range(len(models))]
            ax.bar(xs, ratios, width, label=k.VARIANT_LABELS[v])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(models)), models)
        ax.set_title(f"batch {batch}")
        ax.set_ylabel("time ÷ plain eager NCHW (lower is faster)")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(k.VARIANTS), fontsize=8, frameon=False)
    mc = report["machine"]
    threads = f"{mc['threads']} thread{'s' if mc['threads'] != 1 else ''}"
    fig.suptitle(
        f"CPU latency, {mc['cpu']}, {threads}, torch {mc['torch']} "
        f"(foreign CPU {pct(report['windows'].get(k.RUN, {}).get('foreign_share'))})",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def doc_paths(json_path: Path) -> tuple[Path, Path]:
    """Default markdown and plot for a results file: docs/results/x.json -> docs/x.md, x.png
    (a results file elsewhere gets them beside it)."""
    folder = json_path.parent.parent if json_path.parent.name == "results" else json_path.parent
    return folder / f"{json_path.stem}.md", folder / f"{json_path.stem}.png"


def _with_block(text: str | None, key: str, body: str) -> str:
    """`text` with the generated block `key` set to `body` (a new doc, or the block appended to
    a hand-written file that has none)."""
    block = BLOCK_TEMPLATE.format(key=key, body=body)
    if text is None:
        return (DOC_HEAD if key == BLOCK else "") + block
    if key in generated_blocks(text):
        return replace_generated(text, key, body)
    return text.rstrip("\n") + "\n\n" + block


def render(json_path: Path, md_path: Path | None = None, png_path: Path | None = None) -> Path:
    """Rewrite the markdown's generated block (creating the file if needed) and the plot: the
    `data_loading` block for a `--sections data` run, else the `benchmarks` block."""
    report = flat_report(read_results(json_path))
    default_md, default_png = doc_paths(json_path)
    md_path, png_path = md_path or default_md, png_path or default_png
    png_name = None
    if latency_cases(report):
        render_plot(report, png_path)
        png_name = os.path.relpath(png_path, md_path.parent)
    if report["sections"] == ["data"]:
        key, body = DATA_BLOCK, render_data_markdown(report)
    else:
        key, body = BLOCK, render_markdown(report, png_name)
    text = md_path.read_text(encoding="utf-8") if md_path.exists() else None
    new = _with_block(text, key, body)
    atomic_write(md_path, lambda tmp: tmp.write_text(new, encoding="utf-8"))
    return md_path
