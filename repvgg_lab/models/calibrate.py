"""Per-channel activation statistics of a plain net, measured on real images.

Data-driven pruning (`prune_plain(..., score="act", stats=...)`) uses them twice: a channel's
spread says how much removing it perturbs its consumer, and its mean is the constant that
replaces it (the carrier of `repvgg_lab.models.prune` then delivers that constant exactly,
zero padding included).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn

from repvgg_lab.errors import InputError
from repvgg_lab.models.plain import PlainLayer, PlainNet, as_plain_net


@dataclass(frozen=True)
class ChannelStats:
    """Mean and standard deviation (float64, CPU) of one layer's output channels, over every
    image and pixel seen; `count` is how many values each channel contributed."""

    mean: Tensor
    std: Tensor
    count: int


def _images(batch: Any) -> Tensor:
    """The image tensor of a batch: the batch itself, or the first item of (images, labels)."""
    if isinstance(batch, list | tuple):
        batch = batch[0]
    if not isinstance(batch, Tensor) or batch.dim() != 4:
        raise InputError(f"calibration batches must be NCHW image tensors, got {type(batch)}")
    return batch


@torch.no_grad()
def activation_stats(
    net: nn.Module, batches: Iterable[Any], max_batches: int | None = None
) -> list[ChannelStats]:
    """Run `net` (in eval mode) over `batches` (image tensors or (images, labels) pairs, at
    most `max_batches`) and return every layer's per-channel output statistics, in the layer
    order of its `PlainNet` form (`net` may be anything `as_plain_net` accepts).

    Sums are accumulated in float64, so many batches do not lose precision."""
    if not isinstance(net, PlainNet):
        net = as_plain_net(net)
    layers = [m for m in net.features if isinstance(m, PlainLayer)]
    sums: list[Tensor | None] = [None] * len(layers)
    squares: list[Tensor | None] = [None] * len(layers)
    counts = [0] * len(layers)

    def hook(i: int):
        def record(_module: nn.Module, _inputs: Any, out: Tensor) -> None:
            y = out.detach().to("cpu", torch.float64)
            s, q = y.sum(dim=(0, 2, 3)), y.square().sum(dim=(0, 2, 3))
            sums[i] = s if sums[i] is None else sums[i] + s
            squares[i] = q if squares[i] is None else squares[i] + q
            counts[i] += y.numel() // y.shape[1]

        return record

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    was_training = net.training
    param = next(net.parameters())
    try:
        net.eval()
        for batch in islice(batches, max_batches):
            net(_images(batch).to(param.device, param.dtype))
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    if not counts[0]:
        raise InputError("no calibration images: the batches were empty")
    result = []
    for s, q, n in zip(sums, squares, counts, strict=True):
        assert s is not None and q is not None
        mean = s / n
        var = (q / n - mean.square()).clamp_min(0.0)
        result.append(ChannelStats(mean=mean, std=var.sqrt(), count=n))
    return result
