"""Interleaved CPU latency: every round times each function once, so load changes on a shared
machine hit all of them alike; the median over rounds is reported."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any


def measure_latency(
    fns: Mapping[str, Callable[[], Any]], rounds: int = 9, warmup: int = 3
) -> dict[str, dict[str, Any]]:
    """Per name: median_ms, min_ms and the per-round times_ms (aligned across names)."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        # Rotate the order so no function always runs right after the same neighbour.
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {
        name: {
            "median_ms": statistics.median(t),
            "min_ms": min(t),
            "times_ms": t,
        }
        for name, t in times.items()
    }


def paired_ratio(results: dict[str, dict[str, Any]], slow: str, fast: str) -> float:
    """Median over rounds of time[slow] / time[fast] (robust to load that drifts between rounds)."""
    pairs = zip(results[slow]["times_ms"], results[fast]["times_ms"], strict=True)
    return statistics.median(a / b for a, b in pairs if b > 0)
