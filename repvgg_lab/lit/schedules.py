"""Learning-rate schedules stepped per optimizer step."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _warmup_steps(steps_per_epoch: int, warmup_epochs: float) -> int:
    return int(round(warmup_epochs * steps_per_epoch))


def cosine(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int = 1,
    warmup_epochs: float = 0.0,
    min_factor: float = 0.0,
) -> LambdaLR:
    """Linear warm-up over `warmup_epochs`, then cosine decay to `min_factor` x the base lr."""
    total_steps = max(1, total_steps)
    warmup = _warmup_steps(steps_per_epoch, warmup_epochs)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def constant(
    optimizer: Optimizer, total_steps: int, steps_per_epoch: int = 1, warmup_epochs: float = 0.0
) -> LambdaLR:
    """Constant learning rate after an optional linear warm-up."""
    warmup = _warmup_steps(steps_per_epoch, warmup_epochs)
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
