"""What a benchmark run collects (`Run`) and how its numbers compare with the targets."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from repvgg_lab.bench.keys import TARGETS
from repvgg_lab.bench.machine import CpuWindow, wait_until_quiet


@dataclass
class Run:
    """What a run collects: numeric metrics, text labels, load windows, errors, raw rounds."""

    wait_quiet_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    windows: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @contextlib.contextmanager
    def window(self, name: str) -> Iterator[None]:
        """Record load and foreign CPU share over the block (after waiting for quiet if asked)."""
        if self.wait_quiet_s > 0:
            wait_until_quiet(self.wait_quiet_s)
        with CpuWindow() as w:
            yield
        self.windows[name] = w.record()


def verdict(holds: bool | None) -> str:
    """A target's verdict in words."""
    return {True: "holds", False: "missed", None: "not measured"}[holds]


def targets(metrics: dict[str, float]) -> list[dict[str, Any]]:
    """Each target with its measured value and whether it holds (None when not measured)."""
    out = []
    for description, key, limit in TARGETS:
        value = metrics.get(key)
        holds = None if value is None or not math.isfinite(value) else bool(value <= limit)
        out.append(
            {"target": description, "key": key, "value": value, "limit": limit, "holds": holds}
        )
    return out
