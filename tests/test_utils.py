"""Interleaved latency measurement: every round times every function once."""

from __future__ import annotations

import time

import pytest

from repvgg_lab.utils import measure_latency, paired_ratio


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
