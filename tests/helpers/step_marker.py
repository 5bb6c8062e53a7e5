"""A test-only callback that writes the global step after every training batch (for kill tests)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl


class StepMarker(pl.Callback):
    """After each optimizer step, atomically write `trainer.global_step` to `path`, then sleep
    `delay` seconds so a test can land a signal between two steps."""

    def __init__(self, path: str, delay: float = 0.0) -> None:
        self.path, self.delay = Path(path), delay

    def on_train_batch_end(self, trainer: pl.Trainer, *_: Any) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(str(trainer.global_step))
        os.replace(tmp, self.path)
        time.sleep(self.delay)
