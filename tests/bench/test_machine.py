"""CPU accounting from /proc/stat: another process's work is foreign, our own is not."""

from __future__ import annotations

import math
import subprocess
import sys
import time

from repvgg_lab.bench.machine import CpuWindow, cores, machine_busy_s, own_cpu_s, wait_until_quiet
from repvgg_lab.bench.result import Run

SPIN = "import time\nt = time.time()\nwhile time.time() - t < 3: pass"


def test_machine_counters_advance() -> None:
    busy, own = machine_busy_s(), own_cpu_s()
    t = time.process_time()
    while time.process_time() - t < 0.3:
        pass
    assert own_cpu_s() - own >= 0.25
    assert machine_busy_s() - busy >= 0.25  # our spin is part of the machine's busy time


def test_cpu_window_counts_another_process_as_foreign() -> None:
    child = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        time.sleep(0.5)  # let the child start spinning
        with CpuWindow() as w:
            time.sleep(1.0)
    finally:
        child.kill()
        child.wait()
    record = w.record()
    assert record["foreign_cores"] > 0.2
    assert record["own_cores"] < 0.2  # we slept
    assert record["foreign_share"] == record["foreign_cores"] / cores()
    assert 0.9 < record["wall_s"] < 5 and record["load_before"] >= 0


def test_cpu_window_counts_our_own_work_as_own() -> None:
    with CpuWindow() as w:
        t = time.process_time()
        while time.process_time() - t < 0.5:
            pass
    assert w.own_cores * w.wall_s >= 0.45  # our CPU seconds, however busy the machine is
    assert w.foreign_cores >= 0


def test_wait_until_quiet_samples_one_second_windows() -> None:
    start = time.monotonic()
    seen = wait_until_quiet(1.5, share=math.inf)  # any share is quiet: one window suffices
    assert seen is not None and seen >= 0
    assert 1.0 <= time.monotonic() - start < 2.5
    assert wait_until_quiet(0.0) is None  # no time for a single window


def test_run_window_records_each_named_block() -> None:
    run = Run()
    with run.window("a"):
        time.sleep(0.05)
    assert set(run.windows) == {"a"} and run.windows["a"]["wall_s"] >= 0.05
