"""Reparameterize measures the plain net on the images the Trainer measures the multi-branch
net on: with debug=limit's few batches, val/acc and deploy/val/acc count the same images."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl

from repvgg_lab.data import DigitsDataModule
from repvgg_lab.lit import ClassifierModule, Reparameterize
from repvgg_lab.lit import evaluate as evaluate_module


class _CountImages(pl.Callback):
    """Images the Trainer evaluates in its last validation epoch and in its test."""

    def __init__(self) -> None:
        self.images = {"val": 0, "test": 0}

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.images["val"] = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, *args) -> None:
        self.images["val"] += len(batch[1])

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, *args) -> None:
        self.images["test"] += len(batch[1])


def test_plain_and_multi_branch_nets_are_measured_on_the_same_images(monkeypatch) -> None:
    counted: list[int] = []
    evaluate = evaluate_module.evaluate

    def counting(net, batches, device="cpu"):
        batches = list(batches)
        counted.append(sum(len(y) for _, y in batches))
        return evaluate(net, batches, device)

    monkeypatch.setattr(evaluate_module, "evaluate", counting)
    dm = DigitsDataModule(img_size=16, batch_size=16)
    module = ClassifierModule(model_name="repvgg_a0", num_classes=10, in_channels=3, input_size=16)
    reparam, images = Reparameterize(drift_batch_size=8, save=False), _CountImages()
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=2,  # debug=limit
        limit_test_batches=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[reparam, images],
    )
    trainer.fit(module, datamodule=dm)
    val_acc = float(trainer.callback_metrics["val/acc"])
    test_acc = float(trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc"])
    assert images.images == {"val": 2 * 16, "test": 3 * 16}  # the limits took effect
    assert counted == [images.images["val"], images.images["test"]]
    # The plain net computes what the multi-branch net computes: on the same images, the same
    # accuracy (a count over 32 and 48 images; float32 drift does not move an argmax here).
    assert reparam.metrics["deploy/val/acc"] == pytest.approx(val_acc)
    assert reparam.metrics["deploy/test/acc"] == pytest.approx(test_acc)
