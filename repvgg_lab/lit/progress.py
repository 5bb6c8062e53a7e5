"""Per-epoch progress for logs that are files: one line per epoch, with throughput and the share
of step time spent waiting for data (`perf/data_wait`), the number that says whether the loader
keeps the accelerator fed."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)

_SHOWN = ("train/loss", "train/acc", "val/loss", "val/acc", "ema/val/acc")


def _file_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


def emit(line: str) -> None:
    """Log `line`; on a terminal (where the progress bar shows the same) only to log files."""
    if not sys.stdout.isatty():
        log.info(line)
        return
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, line, None, None)
    for handler in _file_handlers():
        handler.handle(record)


class EpochLog(pl.Callback):
    """Measures data wait and images/s over each training epoch, logs them as `perf/data_wait`
    and `perf/images_per_s`, and writes one line per epoch (`emit`).

    Data wait is the time from the end of one training step (or the epoch's start) to the start
    of the next: fetching and collating the batch, plus Lightning's own bookkeeping (small)."""

    def __init__(self) -> None:
        self._mark = 0.0
        self._wait = self._start = 0.0
        self._images = 0
        self._pending: int | None = None

    def _reset(self) -> None:
        self._start = self._mark = time.perf_counter()
        self._wait, self._images = 0.0, 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()  # a run resumed mid-epoch gets no on_train_epoch_start for that epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)
        self._reset()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, *_: Any):
        self._wait += time.perf_counter() - self._mark
        x = batch[0] if isinstance(batch, list | tuple) else batch
        self._images += int(x.shape[0]) if torch.is_tensor(x) else 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *_: Any) -> None:
        self._mark = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        elapsed = max(self._mark - self._start, 1e-9)
        pl_module.log("perf/data_wait", self._wait / elapsed, sync_dist=True)
        # Per process; a DDP run's total is world_size times this.
        pl_module.log("perf/images_per_s", self._images / elapsed, sync_dist=True)
        self._pending = trainer.current_epoch

    def _flush(self, trainer: pl.Trainer) -> None:
        """The line of the epoch that ended last, once Lightning has reduced its metrics (after
        every on_train_epoch_end hook): at the next epoch's start, or when training ends."""
        epoch, self._pending = self._pending, None
        if epoch is None or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        parts = [f"epoch {epoch + 1}/{trainer.max_epochs}"]
        parts += [f"{k} {float(m[k]):.4f}" for k in _SHOWN if k in m]
        if "perf/images_per_s" in m:
            parts.append(f"{float(m['perf/images_per_s']):.0f} img/s")
            parts.append(f"data wait {100 * float(m['perf/data_wait']):.1f} %")
        emit("  ".join(parts))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)
