"""LightningModule that trains any registry model (multi-branch or plain) as a classifier."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import Tensor, nn
from torch.nn import functional as F

from repvgg_lab.data.sampling import reseed_globals, seeded_rng
from repvgg_lab.fileio import json_values
from repvgg_lab.models import create_model
from repvgg_lab.prune.gates import sparsity_penalty

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


def param_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear kernels only: none on BN parameters, biases or gates."""
    decay = [p for p in net.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.requires_grad and p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class ClassifierModule(pl.LightningModule):
    """Trains `net` with cross-entropy; logs `<stage>/loss` and `<stage>/acc`.

    The hyper-parameters (model name, classes, channels, input size, options) make a checkpoint
    self-describing: `deploy.py` rebuilds the architecture from them. `metric_prefix` ("" for the
    multi-branch net, "finetune" for a plain net being fine-tuned) namespaces the metrics.
    `compile_backend` (e.g. "inductor") trains through `torch.compile` of the net.
    """

    def __init__(
        self,
        model_name: str,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: int = 32,
        model_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        init: Callable[[nn.Module], nn.Module] | None = None,
        lr_batch_reference: int | None = 256,
        label_smoothing: float = 0.0,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        sparsity: float = 0.0,
        channels_last: bool = False,
        compile_backend: str | None = None,
        metric_prefix: str = "",
        net: nn.Module | None = None,
        teacher: nn.Module | None = None,
        distill: float = 0.0,
        temperature: float = 4.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= distill <= 1.0 or temperature <= 0:
            raise ValueError(
                f"distill must lie in [0, 1] and temperature be > 0, got {distill}, {temperature}"
            )
        if distill > 0 and teacher is None:
            raise ValueError("distill > 0 needs a teacher net")
        # Plain containers only, so checkpoints load with torch.load(weights_only=True).
        model_kwargs = json_values(model_kwargs or {})
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "init", "net", "teacher"])
        # Not a submodule: the teacher is neither trained, nor saved, nor counted.
        self._teacher = [teacher.eval().requires_grad_(False)] if teacher is not None else []
        self.net = net if net is not None else self._new_net(init)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
            for t in self._teacher:
                t.to(memory_format=torch.channels_last)
        # The compiled forward shares the net's parameters; kept out of the module tree so that
        # checkpoints, conversion and the optimizer see the net's own names.
        self._compiled = (
            [torch.compile(self.net, backend=compile_backend)] if compile_backend else []
        )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.mixup_fn = self._make_mixup(mixup, cutmix, label_smoothing, num_classes)
        self.prefix = f"{metric_prefix}/" if metric_prefix else ""
        acc = torchmetrics.classification.MulticlassAccuracy
        self.accuracy = nn.ModuleDict(
            {
                f"{stage}_acc": acc(num_classes=num_classes, average="micro")
                for stage in ("train", "val", "test")
            }
        )

    def _new_net(self, init: Callable[[nn.Module], nn.Module] | None) -> nn.Module:
        """The registry's net named by the hyper-parameters, through the init scheme if any."""
        hp = self.hparams
        net = create_model(
            hp.model_name, num_classes=hp.num_classes, in_channels=hp.in_channels, **hp.model_kwargs
        )
        return init(net) if init is not None else net

    @staticmethod
    def _make_mixup(mixup: float, cutmix: float, smoothing: float, num_classes: int):
        if mixup <= 0 and cutmix <= 0:
            return None
        from timm.data import Mixup

        return Mixup(
            mixup_alpha=mixup,
            cutmix_alpha=cutmix,
            label_smoothing=smoothing,
            num_classes=num_classes,
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (self._compiled[0] if self._compiled else self.net)(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        if stage == "train" and self.mixup_fn is not None and x.shape[0] % 2 == 0:
            x, soft = self.mixup_fn(x, y)
            logits = self(x)
            loss = torch.sum(-soft * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            logits = self(x)
            smoothing = self.hparams.label_smoothing if stage == "train" else 0.0
            loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        if stage == "train" and self.hparams.distill > 0:
            loss = (1 - self.hparams.distill) * loss + self.hparams.distill * self._distill(
                x, logits
            )
        metric = self.accuracy[f"{stage}_acc"]
        metric(logits.detach(), y)
        # Training loss per step (the curve users watch), validation/test loss per epoch.
        on_step = stage == "train"
        self.log(
            f"{self.prefix}{stage}/loss", loss, on_step=on_step, on_epoch=not on_step, prog_bar=True
        )
        self.log(f"{self.prefix}{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _distill(self, x: Tensor, logits: Tensor) -> Tensor:
        """Knowledge distillation: T^2 * KL(teacher || student) of the temperature-T softmaxes
        (Hinton et al.), the teacher run in eval mode on the same input."""
        teacher = self._teacher[0]
        dtype = next(self.net.parameters()).dtype
        weight = next(teacher.parameters())
        if weight.device != x.device or weight.dtype != dtype:
            teacher.to(device=x.device, dtype=dtype)
        with torch.no_grad():
            target = F.log_softmax(teacher(x).float() / self.hparams.temperature, dim=-1)
        student = F.log_softmax(logits.float() / self.hparams.temperature, dim=-1)
        kl = F.kl_div(student, target, log_target=True, reduction="batchmean")
        self.log(f"{self.prefix}train/distill", kl, on_step=True)
        return kl * self.hparams.temperature**2

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        if self.hparams.sparsity > 0:
            penalty = sparsity_penalty(self.net)
            self.log(f"{self.prefix}train/sparsity_penalty", penalty, on_step=True)
            loss = loss + self.hparams.sparsity * penalty
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            factory: OptimizerFactory = torch.optim.SGD
            kwargs: dict[str, Any] = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
        else:
            factory, kwargs = self.optimizer_factory, {}
        keywords = {**getattr(factory, "keywords", {}), **kwargs}
        lr = keywords.pop("lr", 0.1)
        weight_decay = keywords.pop("weight_decay", 0.0)
        func = getattr(factory, "func", factory)
        reference = self.hparams.lr_batch_reference
        if reference:
            lr = lr * self._global_batch_size() / reference
        optimizer = func(param_groups(self.net, weight_decay), lr=lr, **keywords)
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        epochs = (
            self.trainer.max_epochs
            if self.trainer.max_epochs and self.trainer.max_epochs > 0
            else 1
        )
        scheduler = self.scheduler_factory(
            optimizer, total_steps=total, steps_per_epoch=max(1, total // epochs)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _global_batch_size(self) -> int:
        dm = getattr(self.trainer, "datamodule", None)
        per_device = getattr(dm, "batch_size", None) or 256
        return (
            int(per_device) * max(1, self.trainer.world_size) * self.trainer.accumulate_grad_batches
        )

    def on_fit_start(self) -> None:
        self._rng_seed = torch.initial_seed()  # the run's seed (seed_everything's), read once

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # In-step randomness (mixup, dropout) as a function of (seed, step): a resumed run
        # draws what an uninterrupted one would, although the RNG state is not checkpointed.
        rng = seeded_rng(getattr(self, "_rng_seed", 0), self.global_step)
        reseed_globals(int(rng.integers(0, 2**63 - 1)))
        optimizers = self.optimizers()
        if isinstance(optimizers, torch.optim.Optimizer | pl.core.optimizer.LightningOptimizer):
            self.log(f"{self.prefix}train/lr", optimizers.param_groups[0]["lr"], on_step=True)
