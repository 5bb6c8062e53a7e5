"""Recalibration of a lossily pruned plain net on real images.

Removing channels that still vary shifts and rescales the pre-activations of every later layer;
a plain net has no BN left to absorb that, and the error compounds with depth. `recalibrate`
restores, layer by layer, each kept channel's pre-activation mean and spread to what it was
before pruning, with an affine map folded into the conv: the data-driven counterpart of
re-estimating BN statistics after pruning.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn

from repvgg_lab.errors import InputError
from repvgg_lab.models.plain import PlainLayer, PlainNet
from repvgg_lab.prune.view import as_plain_net


def _images(batch: Any) -> Tensor:
    """The image tensor of a batch: the batch itself, or the first item of (images, labels)."""
    if isinstance(batch, list | tuple):
        batch = batch[0]
    if not isinstance(batch, Tensor) or batch.dim() != 4:
        raise InputError(f"calibration batches must be NCHW image tensors, got {type(batch)}")
    return batch


def _preactivation_stats(
    layers: list[PlainLayer], batches: list[Tensor]
) -> list[tuple[Tensor, Tensor]]:
    """Per-channel mean and std (float64) of every layer's conv output over `batches`, in one
    pass through `layers`."""
    totals: list[Tensor] = []
    squares: list[Tensor] = []
    count = [0] * len(layers)
    for x in batches:
        for i, layer in enumerate(layers):
            z = layer.conv(x)
            x = layer.pool(layer.act(z))
            z = z.detach().to("cpu", torch.float64)
            s, q = z.sum(dim=(0, 2, 3)), z.square().sum(dim=(0, 2, 3))
            if i == len(totals):
                totals.append(s)
                squares.append(q)
            else:
                totals[i] += s
                squares[i] += q
            count[i] += z.numel() // z.shape[1]
    stats = []
    for total, square, n in zip(totals, squares, count, strict=True):
        mean = total / n
        stats.append((mean, (square / n - mean.square()).clamp_min(0.0).sqrt()))
    return stats


@torch.no_grad()
def recalibrate(
    pruned: PlainNet,
    source: nn.Module,
    sources: list[list[int]],
    batches: Iterable[Any],
    max_batches: int | None = None,
) -> PlainNet:
    """Undo the drift that lossy pruning causes downstream, layer by layer, on real images.

    Removing varying channels shifts and rescales the pre-activations of every later layer, and a
    plain net has no BN to absorb that. For each layer in order (earlier ones corrected first),
    each kept channel's conv output gets the affine map `a*z + c` that restores the mean and
    standard deviation it has in `source` on the same images, folded into the conv (W <- a*W,
    b <- a*b + c; exact, it acts before the activation). Channels whose spread fell below 1e-3
    of the source's keep a = 1 (only the mean is restored). `sources[i]` lists, for each
    channel of layer i of `pruned`, its channel in `source` (-1 for a carrier, which is left
    alone): the `source` lists of the pruning summary.
    Returns a corrected copy; `pruned` and `source` are untouched."""
    original = source if isinstance(source, PlainNet) else as_plain_net(source)
    net = copy.deepcopy(pruned).eval()
    param = next(net.parameters())
    images = [_images(b).to(param.device, param.dtype) for b in islice(batches, max_batches)]
    if not images:
        raise InputError("no calibration images: the batches were empty")
    # A PlainNet has no BN or dropout: its mode does not matter, and `source` keeps its own.
    old = [m for m in original.features if isinstance(m, PlainLayer)]
    new = [m for m in net.features if isinstance(m, PlainLayer)]
    if len(old) != len(new) or len(sources) != len(new):
        raise InputError("recalibrate: the pruned net and its source have different depths")
    wanted = _preactivation_stats(old, images)  # the source is not changed: one pass
    for i, layer in enumerate(new):
        want_mean, want_std = wanted[i]
        # Layer i's statistics depend on the layers before it, corrected just now.
        mean, std = _preactivation_stats(new[: i + 1], images)[i]
        src = torch.tensor(sources[i])
        real = src >= 0
        target_mean, target_std = want_mean[src[real]], want_std[src[real]]
        scale = torch.ones_like(mean)
        usable = std[real] > 1e-3 * target_std.clamp_min(1e-30)
        scale[real] = torch.where(usable, target_std / std[real].clamp_min(1e-30), 1.0)
        shift = torch.zeros_like(mean)
        shift[real] = target_mean - scale[real] * mean[real]
        conv = layer.conv
        w, b = conv.weight.to(torch.float64), conv.bias.to(torch.float64)
        scale, shift = scale.to(w.device), shift.to(w.device)
        conv.weight.copy_(w * scale.view(-1, 1, 1, 1))
        conv.bias.copy_(b * scale + shift)
    return net.train(pruned.training)
