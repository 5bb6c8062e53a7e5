"""All-or-nothing file writes: a reader never sees a half-written export or report."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp files are private (0600); published files get the usual umask-based mode.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp_path)` and move the result onto `path` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def json_values(value: Any) -> Any:
    """`value` as JSON-ready Python values: mappings (OmegaConf's too) as dicts with string keys,
    sequences as lists, 0-d tensors and numpy scalars as numbers, inf/nan and anything else
    as strings (JSON has no inf/nan)."""
    if isinstance(value, Mapping):
        return {str(k): json_values(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [json_values(v) for v in value]
    if callable(getattr(value, "item", None)) and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write `data` as indented JSON, atomically."""
    text = json.dumps(json_values(data), indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def missing_folders(path: str | Path) -> list[Path]:
    """`path` and each of its parents that do not exist yet, outermost first: the folders that
    `mkdir(parents=True)` would create (absolute, so a later change of folder does not matter)."""
    path = Path(os.path.abspath(path))
    return [p for p in (*reversed(path.parents), path) if not p.exists()]


def remove_created(created: Sequence[Path], leftovers: Collection[str] = ()) -> list[Path]:
    """Undo `mkdir`s: remove the folders of `created` (outermost first, as `missing_folders`
    gives them) innermost first, each only while it holds nothing but files named in
    `leftovers`; the first folder holding anything else stops it. Returns what was removed."""
    removed = []
    for folder in reversed(created):
        if not folder.is_dir():
            continue
        entries = list(folder.iterdir())
        if any(e.name not in leftovers or not e.is_file() for e in entries):
            break
        for entry in entries:
            entry.unlink()
        folder.rmdir()
        removed.append(folder)
    return removed
