"""A plain evaluation loop for nets outside the Trainer (the converted net after fit), over
the same batches the Trainer evaluates."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from repvgg_lab.utils import evaluating


def evaluate(
    net: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of `net` over `batches` in eval mode."""
    correct, total, loss_sum = 0, 0, 0.0
    dtype = next(net.parameters()).dtype
    with torch.no_grad(), evaluating(net):
        for x, y in batches:
            x, y = x.to(device=device, dtype=dtype), y.to(device)
            logits = net(x)
            loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
            total += int(y.numel())
    if total == 0:
        raise ValueError("evaluation set is empty")
    return {"acc": correct / total, "loss": loss_sum / total}


def _trainer_batches(trainer: pl.Trainer, stage: str) -> Iterable[Any]:
    """The `stage` batches of the trainer's datamodule cut to `limit_<stage>_batches` as
    Lightning counts them (an int: that many batches; a float: that share, rounded down)."""
    loader = getattr(trainer.datamodule, f"{stage}_dataloader")()
    limit = getattr(trainer, f"limit_{stage}_batches")
    if isinstance(limit, float):
        if limit == 1.0:
            return loader
        limit = int(len(loader) * limit)
    return itertools.islice(loader, limit)


def evaluate_like_trainer(
    net: nn.Module, trainer: pl.Trainer, stage: str, device: torch.device | str = "cpu"
) -> dict[str, float] | None:
    """`evaluate` over the `stage` ("val" or "test") batches the Trainer itself evaluates
    (debug=limit, fast_dev_run and overfit_batches cut them), so a net measured outside the
    Trainer is measured on the same images as the one inside; None when the Trainer evaluates
    none (`limit_<stage>_batches=0`)."""
    batches = iter(_trainer_batches(trainer, stage))  # streamed: never a whole split in memory
    first = next(batches, None)
    if first is None:
        return None
    return evaluate(net, itertools.chain([first], batches), device)
