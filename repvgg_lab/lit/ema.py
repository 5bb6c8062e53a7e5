"""An exponential moving average of the weights, the net the paper recipes deploy.

The averaged copy lives beside the trained net: `val/acc` stays the raw net's and `ema/val/acc`
is the average's, checkpoints carry both weight sets (`ema_state_dict` beside `state_dict`),
and the `Reparameterize` callback converts the average when there is one."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from repvgg_lab.errors import ConfigError
from repvgg_lab.lit.evaluate import evaluate_like_trainer

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "ema_state_dict"


class EMA(pl.Callback):
    """After every optimizer step: ema <- d * ema + (1 - d) * weights, for parameters and BN
    statistics alike (integer buffers are copied). With `warmup`, d = min(decay, (1 + t) /
    (10 + t)) at step t, so short runs are not dominated by the initial weights."""

    def __init__(self, decay: float = 0.9998, warmup: bool = True) -> None:
        if not isinstance(decay, float) or not 0.0 < decay < 1.0:
            raise ConfigError(f"ema.decay must be a number in (0, 1), got {decay!r}")
        self.decay, self.warmup = decay, warmup
        self.net: nn.Module | None = None
        self.updates = 0
        self._pending: dict[str, torch.Tensor] | None = None
        self._last_step = 0  # trainer.global_step at the last update

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.net = copy.deepcopy(pl_module.net).eval().requires_grad_(False)
        if self._pending is not None:  # resumed: the checkpoint's average, not a fresh copy
            self.net.load_state_dict(self._pending)
        else:
            self.updates = 0  # a fresh average starts its warmup again

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Any checkpoint is restored by now (some strategies restore after on_fit_start).
        self._pending = None
        self._last_step = trainer.global_step

    def current_decay(self) -> float:
        """The decay of the next update."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any):
        # Once per optimizer step: with gradient accumulation most batches change no weight.
        if trainer.global_step <= self._last_step:
            return
        self._last_step = trainer.global_step
        d = self.current_decay()
        pairs = zip(
            self.net.state_dict().values(), pl_module.net.state_dict().values(), strict=True
        )
        for avg, new in pairs:
            if avg.is_floating_point():
                avg.lerp_(new.detach(), 1.0 - d)
            else:
                avg.copy_(new)
        self.updates += 1

    def _log_evaluation(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str):
        """ema/<stage>/acc and loss, on the batches the Trainer evaluates the trained net on."""
        result = evaluate_like_trainer(self.net, trainer, stage, pl_module.device)
        if result is not None:
            # Logged through the module so checkpoint callbacks can monitor ema/val/acc.
            pl_module.log(f"ema/{stage}/acc", result["acc"], sync_dist=True)
            pl_module.log(f"ema/{stage}/loss", result["loss"], sync_dist=True)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule):
        if self.net is not None and not trainer.sanity_checking:
            self._log_evaluation(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.net is not None:
            self._log_evaluation(trainer, pl_module, "test")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ckpt: dict):
        if self.net is not None:
            ckpt[CHECKPOINT_KEY] = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            ckpt["ema_updates"] = self.updates

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ckpt: dict):
        if CHECKPOINT_KEY in ckpt:
            self.updates = int(ckpt.get("ema_updates", 0))
            # Kept until training starts: on_fit_start, when it comes after, copies the net anew.
            self._pending = ckpt[CHECKPOINT_KEY]
            if self.net is not None:
                self.net.load_state_dict(self._pending)
