"""Parameter and multiply-accumulate counts of a net (convs and linear layers)."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN running statistics are not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(
    model: nn.Module, input_size: int | tuple[int, int] = 224, in_channels: int = 3
) -> int:
    """Multiply-accumulates of one forward pass on a single image (the papers' "FLOPs")."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    total = 0

    def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    p = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, h, w, dtype=p.dtype, device=p.device))
    finally:
        model.train(was_training)
        for h_ in handles:
            h_.remove()
    return int(total)
