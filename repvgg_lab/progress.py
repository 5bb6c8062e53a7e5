"""Progress on long loops for every layer: a tqdm bar on a terminal, plain log lines elsewhere
(a file, a SLURM job's output), so a redirected run still says how far it got."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm import tqdm

log = logging.getLogger("repvgg_lab.progress")


class Progress:
    """Counts work done out of `total` (in `unit`s, e.g. images). On a terminal (stderr a TTY)
    a tqdm bar; otherwise a log line each time another tenth is done, at most one every
    `min_interval` seconds and never before `quiet_for` seconds have passed, so short work
    says nothing. `enabled=False` silences both."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "img",
        enabled: bool = True,
        quiet_for: float = 5.0,
        min_interval: float = 10.0,
    ) -> None:
        self.total, self.desc, self.unit, self.count = max(int(total), 0), desc, unit, 0
        self.enabled = enabled and self.total > 0
        self.quiet_for, self.min_interval = quiet_for, min_interval
        self.start = self.last = time.perf_counter()
        self.next_tenth = 1
        self.bar: Any = None
        if self.enabled and sys.stderr.isatty():
            self.bar = tqdm(
                total=self.total, desc=desc, unit=unit, dynamic_ncols=True, delay=quiet_for
            )

    def update(self, n: int = 1) -> None:
        """`n` more units done."""
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
            return
        if not self.enabled or self.count * 10 < self.next_tenth * self.total:
            return
        self.next_tenth = self.count * 10 // self.total + 1
        now = time.perf_counter()
        done = self.count >= self.total
        if now - self.start < self.quiet_for or (now - self.last < self.min_interval and not done):
            return
        self.last = now
        rate = self.count / max(now - self.start, 1e-9)
        log.info(
            "%s: %d / %d %s (%.0f%%, %.1f %s/s)",
            self.desc,
            self.count,
            self.total,
            self.unit,
            100.0 * self.count / self.total,
            rate,
            self.unit,
        )

    def close(self) -> None:
        """End the bar (no-op for log lines)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
