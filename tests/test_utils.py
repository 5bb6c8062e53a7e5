"""Interleaved latency measurement: every round times every function once; the machine's load
read before it."""

from __future__ import annotations

import os
import time

import pytest

from repvgg_lab.utils import machine_load, measure_latency, paired_ratio


def test_rounds_interleave_and_warmup_is_not_timed() -> None:
    calls: list[str] = []
    fns = {
        "fast": lambda: calls.append("fast"),
        "slow": lambda: (calls.append("slow"), time.sleep(0.004)),
    }
    result = measure_latency(fns, rounds=5, warmup=2)
    assert calls.count("fast") == calls.count("slow") == 7
    timed = calls[4:]  # after two warm-up rounds of both
    assert all(sorted(timed[i : i + 2]) == ["fast", "slow"] for i in range(0, 10, 2))
    assert timed[0:2] != timed[2:4]  # the order rotates between rounds
    assert len(result["fast"]["times_ms"]) == len(result["slow"]["times_ms"]) == 5
    assert result["slow"]["median_ms"] >= 4.0 > result["fast"]["median_ms"]
    assert result["slow"]["min_ms"] <= result["slow"]["median_ms"]
    assert paired_ratio(result, "slow", "fast") > 1


def test_bad_round_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="rounds"):
        measure_latency({"f": lambda: None}, rounds=0)


def test_the_machine_is_busy_when_its_load_exceeds_its_cores(monkeypatch) -> None:
    cores = os.cpu_count() or 1
    for load, busy in ((cores + 0.5, True), (cores - 0.5, False)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        assert machine_load() == {"load_avg_1min": load, "cores": cores, "busy": busy}
    monkeypatch.delattr(os, "getloadavg")  # no load average on this OS: unknown, never busy
    assert machine_load() == {"load_avg_1min": None, "cores": cores, "busy": False}
