"""Cross-layer equalization (Nagel et al., ICCV 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction"): across a ReLU, output channel i of layer l is scaled by
1/s_i and input channel i of layer l+1 by s_i, s_i = sqrt(r1_i / r2_i) with r the channel's
weight ranges (max |w|), so both layers' per-tensor ranges are balanced and the fp32 function
is unchanged."""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from repvgg_lab.models.plain import PlainNet
from repvgg_lab.quant.plain import as_plain, is_homogeneous, rescale_channels

log = logging.getLogger(__name__)


def _out_ranges(conv: nn.Conv2d) -> Tensor:
    """max |w| of each output channel."""
    return conv.weight.detach().double().flatten(1).abs().amax(dim=1)


def _in_ranges(conv: nn.Conv2d) -> Tensor:
    """max |w| over the weights reading each input channel (dense convs only)."""
    return conv.weight.detach().double().transpose(0, 1).flatten(1).abs().amax(dim=1)


def equalizable_pairs(net: PlainNet) -> list[int]:
    """Indices l whose pair (l, l+1) can be equalized; logs why the others are skipped."""
    layers = list(net.features)
    pairs = []
    for i in range(len(layers) - 1):
        first, second = layers[i].conv, layers[i + 1].conv
        if first.groups != 1 or second.groups != 1:
            log.info(
                "equalize: skipping layers %d-%d (groups %d and %d: only dense pairs are "
                "equalized)",
                i,
                i + 1,
                first.groups,
                second.groups,
            )
        elif not is_homogeneous(layers[i]):
            log.info(
                "equalize: skipping layers %d-%d (%s is not positively homogeneous)",
                i,
                i + 1,
                type(layers[i].act).__name__,
            )
        else:
            pairs.append(i)
    return pairs


def equalize(net: nn.Module, sweeps: int = 4) -> PlainNet:
    """A new PlainNet with every dense conv pair across a ReLU equalized (`sweeps` passes)."""
    plain = as_plain(net)
    pairs = equalizable_pairs(plain)
    layers = list(plain.features)
    for _ in range(sweeps):
        for i in pairs:
            r1 = _out_ranges(layers[i].conv)
            r2 = _in_ranges(layers[i + 1].conv)
            s = torch.where((r1 > 0) & (r2 > 0), (r1 / r2.clamp_min(1e-300)).sqrt(), 1.0)
            rescale_channels(plain, i, 1.0 / s)
    log.info("equalize: %d of %d conv pairs equalized", len(pairs), max(len(layers) - 1, 0))
    return plain
