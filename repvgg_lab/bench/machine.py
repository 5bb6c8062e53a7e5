"""CPU accounting from /proc/stat: how much of the machine other processes took during a
measurement, and waiting for a quiet machine before one."""

from __future__ import annotations

import os
import time


def machine_busy_s() -> float:
    """Seconds of CPU time the whole machine has spent busy since boot (Linux /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq [steal guest guest_nice]; guest is inside user.
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process (all threads) and of its reaped children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def cores() -> int:
    """Logical cores of the machine."""
    return os.cpu_count() or 1


# What a window records, in the results file's order.
WINDOW_FIELDS = (
    "wall_s",
    "load_before",
    "load_after",
    "own_cores",
    "foreign_cores",
    "foreign_share",
)


class CpuWindow:
    """Wall time, load average and other processes' CPU use over a `with` block.

    `foreign_cores` is the busy CPU time of the machine minus this process's, per wall second
    (1.0 = one core's worth of someone else's work); `foreign_share` divides it by the cores.
    """

    wall_s = own_cores = foreign_cores = load_before = load_after = 0.0

    def __enter__(self) -> CpuWindow:
        """Start counting: load average, busy and own CPU seconds, wall clock."""
        self.load_before = os.getloadavg()[0]
        self._busy0, self._own0 = machine_busy_s(), own_cpu_s()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop counting and derive own and foreign cores per wall second."""
        self.wall_s = time.perf_counter() - self._t0
        busy1, own1 = machine_busy_s(), own_cpu_s()
        self.load_after = os.getloadavg()[0]
        if self.wall_s <= 0:
            self.own_cores = self.foreign_cores = 0.0
            return
        self.own_cores = (own1 - self._own0) / self.wall_s
        foreign = (busy1 - self._busy0) - (own1 - self._own0)
        # Clock-tick rounding can make a quiet window slightly negative.
        self.foreign_cores = max(0.0, foreign / self.wall_s)

    @property
    def foreign_share(self) -> float:
        """Other processes' share of all cores over the window."""
        return self.foreign_cores / cores()

    def record(self) -> dict[str, float]:
        """The window as JSON-ready numbers."""
        return {name: getattr(self, name) for name in WINDOW_FIELDS}


def wait_until_quiet(max_wait_s: float, share: float = 0.1) -> float | None:
    """Sample 1-s windows until other processes use < `share` of the CPU or time runs out;
    returns the last foreign share seen (None when no window fitted in `max_wait_s`)."""
    deadline = time.monotonic() + max_wait_s
    seen = None
    while time.monotonic() < deadline:
        with CpuWindow() as w:
            time.sleep(1.0)
        seen = w.foreign_share
        if seen < share:
            break
    return seen
