"""Shared datamodule machinery: splits, loader recipe, per-rank batch, and a real Trainer fit."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from repvgg_lab.data import DigitsDataModule, stratified_split


def test_stratified_split_is_seeded_and_keeps_class_proportions() -> None:
    labels = np.repeat(np.arange(4), [10, 20, 40, 3])
    val, rest = stratified_split(labels, (0.25,), seed=7)
    assert np.array_equal(val, stratified_split(labels, (0.25,), seed=7)[0])
    assert not np.array_equal(val, stratified_split(labels, (0.25,), seed=8)[0])
    assert sorted(np.concatenate([val, rest]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[val], minlength=4).tolist() == [2, 5, 10, 1]  # round(0.25 * n)


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (-0.1,), (1.0,)])
def test_stratified_split_rejects_impossible_fractions(fractions: tuple) -> None:
    with pytest.raises(ValueError, match="fractions"):
        stratified_split([0, 1, 0, 1], fractions, seed=0)


def test_loader_recipe() -> None:
    dm = DigitsDataModule(batch_size=5000, num_workers=0)
    train = dm.train_dataloader()
    # Dropping the ragged batch of a split smaller than one batch would leave nothing.
    assert len(train) == 1 and len(next(iter(train))[1]) == len(dm.splits.train)
    assert train.pin_memory == torch.cuda.is_available()
    with_workers = DigitsDataModule(num_workers=1)
    assert with_workers.val_dataloader().persistent_workers
    assert not dm.val_dataloader().persistent_workers


def test_batch_size_is_divided_over_ranks() -> None:
    ddp = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    dm = DigitsDataModule(batch_size=64)
    assert dm.per_rank_batch_size == 64  # no trainer: the whole batch
    dm.trainer = ddp
    assert dm.per_rank_batch_size == 32
    assert dm.train_dataloader().batch_size == 32
    dm = DigitsDataModule(batch_size=63)
    dm.trainer = ddp
    with pytest.raises(ValueError, match="not divisible by world_size=2"):
        dm.train_dataloader()


def test_fixed_batch_rejects_unknown_split() -> None:
    with pytest.raises(ValueError, match="'valid'"):
        DigitsDataModule().fixed_batch("valid")


class _LinearClassifier(pl.LightningModule):
    """The smallest classifier: flatten + linear, SGD."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))
        self.losses: list[float] = []
        self.val_batches = 0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.losses.append(loss.item())
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        self.val_batches += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fits_on_digits() -> None:
    dm = DigitsDataModule(img_size=16, batch_size=32, in_channels=1)
    model = _LinearClassifier(16 * 16, dm.num_classes)
    before = model.net[1].weight.detach().clone()
    trainer = pl.Trainer(
        fast_dev_run=True,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert len(model.losses) == 1 and math.isfinite(model.losses[0])
    assert model.val_batches == 1
    assert not torch.equal(before, model.net[1].weight)


def test_data_package_stays_below_the_pipeline() -> None:
    # timm is imported lazily by the ImageNet transforms: it is slow and pulls in wandb.
    code = (
        "import sys, repvgg_lab.data\n"
        "roots = {'hydra', 'omegaconf', 'wandb', 'lightning', 'timm'}\n"
        "above = ('repvgg_lab.lit', 'repvgg_lab.deploy', 'repvgg_lab.pipeline')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in roots or m.startswith(above)]\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
