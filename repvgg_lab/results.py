"""Results files behind the documented numbers (docs/results/*.json) and their Markdown.

Every measured number the docs quote is written by the command that measured it, into one JSON
file that also records that command, the date and the machine; `markdown_table` renders the
tables the docs show. One writer and one table helper for every study and benchmark."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from repvgg_lab.fileio import write_json

LIBRARIES = ("onnxruntime", "timm", "pytorch_lightning")


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except Exception:  # a missing optional package is just "not installed"
        return None


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """CPU, cores, memory, GPU, library versions and threads of the machine running now."""
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as f:
        mem_gib = round(int(f.readline().split()[1]) / 2**20, 1)
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count() or 1,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_gib": mem_gib,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{name: _version(name) for name in LIBRARIES},
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "not available",
    }


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed: `python scripts/x.py --flag ...` (argv defaults to sys.argv)."""
    args = list(sys.argv if argv is None else argv)
    if args and args[0].endswith(".py"):
        args = [
            "python",
            os.path.relpath(args[0]) if os.path.isabs(args[0]) else args[0],
            *args[1:],
        ]
    return shlex.join(args)


def write_results(
    path: str | Path,
    results: dict[str, Any],
    command: str | None = None,
    threads: int | None = None,
) -> Path:
    """Write `results` with the command that produced them, the date and the machine."""
    record = {
        "command": command if command is not None else command_line(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(threads),
        "results": results,
    }
    return write_json(path, record)


def read_results(path: str | Path) -> dict[str, Any]:
    """A results file as written by `write_results` (the whole record)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A GitHub Markdown table as lines; cells are used as given (str() of each)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


# Docs quote measured numbers only inside generated blocks, rendered from a results file:
#   <!-- BEGIN GENERATED: key -->
#   ...
#   <!-- END GENERATED: key -->
# `python scripts/render_docs.py` rewrites every block; a test checks each block equals what
# its renderer makes of the committed results file.
_BEGIN, _END = "<!-- BEGIN GENERATED: {} -->", "<!-- END GENERATED: {} -->"


def generated_blocks(text: str) -> dict[str, str]:
    """The body of every generated block in `text`, by key."""
    blocks: dict[str, str] = {}
    rest = text
    while (start := rest.find("<!-- BEGIN GENERATED: ")) >= 0:
        key = rest[start + len("<!-- BEGIN GENERATED: ") :].split(" -->", 1)[0]
        head = _BEGIN.format(key)
        end = rest.find(_END.format(key), start)
        if end < 0:
            raise ValueError(f"generated block {key!r} has no end marker")
        blocks[key] = rest[start + len(head) : end].strip("\n")
        rest = rest[end + len(_END.format(key)) :]
    return blocks


def replace_generated(text: str, key: str, body: str) -> str:
    """`text` with the body of block `key` replaced by `body` (the block must exist)."""
    head, tail = _BEGIN.format(key), _END.format(key)
    start, end = text.find(head), text.find(tail)
    if start < 0 or end < start:
        raise ValueError(f"no generated block {key!r}")
    return text[: start + len(head)] + "\n" + body.strip("\n") + "\n" + text[end:]
