"""Every generated block of the docs, its results file and its renderer, in one registry.

README.md and docs/*.md quote measured numbers inside generated blocks (see
`repvgg_lab.results`); `render_docs` rewrites them from the committed files in docs/results/,
and the test suite checks that the committed docs equal what this module renders. A measured
number or finding in the prose around the blocks is a registered quote instead
(`repvgg_lab.studies.prose`), checked against the same files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from repvgg_lab.results import generated_blocks, read_results, replace_generated

Renderer = Callable[[dict[str, Any]], str]
RESULTS_DIR = Path("docs/results")


def doc_blocks() -> dict[str, tuple[str, Renderer]]:
    """Block key -> (results file name in docs/results/, renderer of the whole record)."""
    from repvgg_lab import bench, studies

    return {**bench.DOC_BLOCKS, **studies.DOC_BLOCKS}


def doc_files(root: Path) -> list[Path]:
    """The Markdown files that may hold generated blocks: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def render_block(root: Path, key: str) -> str:
    """The body of block `key` rendered from its committed results file."""
    blocks = doc_blocks()
    if key not in blocks:
        raise KeyError(f"unknown generated block {key!r}; known: {', '.join(sorted(blocks))}")
    name, render = blocks[key]
    path = root / RESULTS_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results file for the docs' {key!r} block")
    return render(read_results(path)).strip("\n")


def render_docs(root: Path, write: bool = True, results_file: str | None = None) -> list[Path]:
    """Re-render the generated blocks under `root` (only those fed by `results_file`, when
    given); the files whose text changed (written back unless `write` is False)."""
    blocks = doc_blocks()
    if results_file is not None and all(name != results_file for name, _ in blocks.values()):
        raise ValueError(f"no doc block is rendered from {results_file!r}")
    changed = []
    for path in doc_files(root):
        text = path.read_text(encoding="utf-8")
        new = text
        for key in generated_blocks(text):
            if results_file is None or blocks[key][0] == results_file:
                new = replace_generated(new, key, render_block(root, key))
        if new != text:
            changed.append(path)
            if write:
                path.write_text(new, encoding="utf-8")
    return changed
