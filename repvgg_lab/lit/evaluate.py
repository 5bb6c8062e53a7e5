"""A plain evaluation loop for nets outside the Trainer (the converted net after fit)."""

from __future__ import annotations

from collections.abc import Iterable

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
