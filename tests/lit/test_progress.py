"""perf/data_wait and the per-epoch log line, through a real Trainer on a deliberately slow
dataset."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
from torch.utils.data import Dataset

from repvgg_lab.data import DigitsDataModule
from repvgg_lab.data.base import Splits
from repvgg_lab.lit import ClassifierModule
from repvgg_lab.lit.progress import EpochLog

DELAY = 0.01  # seconds per training sample
BATCH, STEPS, EPOCHS = 8, 4, 2


class _Slow(Dataset):
    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        time.sleep(DELAY)
        return self.base[i]


class SlowDigits(DigitsDataModule):
    """Digits whose training samples each take DELAY seconds to load."""

    def _build_splits(self) -> Splits:
        s = super()._build_splits()
        return Splits(_Slow(s.train), s.val, s.test, s.train_eval)


def _fit(datamodule: DigitsDataModule) -> pl.Trainer:
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        limit_train_batches=STEPS,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[EpochLog()],
    )
    module = ClassifierModule("small_cnn", num_classes=10, input_size=16)
    trainer.fit(module, datamodule=datamodule)
    return trainer


def test_data_wait_counts_the_time_spent_loading_batches(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="repvgg_lab.lit.progress"):
        trainer = _fit(SlowDigits(img_size=16, batch_size=BATCH, augment=False))
    m = trainer.callback_metrics
    # Every sample sleeps DELAY: the wait is at least that (a lower bound whatever the CPU) and
    # dominates the step time of this tiny net (a step takes milliseconds; a batch sleeps 80 ms).
    epoch_time = STEPS * BATCH / float(m["perf/images_per_s"])
    assert float(m["perf/data_wait"]) * epoch_time >= STEPS * BATCH * DELAY
    assert float(m["perf/data_wait"]) > 0.5
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert all("val/acc" in line and "train/loss" in line and "data wait" in line for line in lines)
