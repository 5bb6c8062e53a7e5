"""Plain nets for int8 work: a RepVGG or PlainNet as a fresh PlainNet copy, and per-channel
rescaling across a positively homogeneous activation (same fp32 function), the move shared by
outlier planting and cross-layer equalization."""

from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor, nn

from repvgg_lab.errors import PruningError, QuantizationError
from repvgg_lab.models.plain import PlainLayer, PlainNet, activation_bounds
from repvgg_lab.prune.view import as_plain_net

log = logging.getLogger(__name__)


def as_plain(net: nn.Module) -> PlainNet:
    """A new eval-mode PlainNet computing `net` (a RepVGG is re-parameterized; `net` untouched)."""
    try:
        plain = as_plain_net(net)
    except PruningError as err:
        raise QuantizationError(f"int8 tools need a plain conv chain: {err}") from None
    return copy.deepcopy(plain).eval()


def is_homogeneous(layer: PlainLayer) -> bool:
    """True if act(k·x) = k·act(x) for every k > 0 (ReLU or identity on every channel)."""
    low, high = activation_bounds(layer.act, layer.conv.out_channels)
    return bool(((low == 0) | (low == -torch.inf)).all() and (high == torch.inf).all())


def consumer_rows(conv: nn.Conv2d, channel: int) -> tuple[slice, int]:
    """For input `channel` of `conv`: the output rows that read it and its index in dim 1."""
    per_group_in = conv.in_channels // conv.groups
    per_group_out = conv.out_channels // conv.groups
    group = channel // per_group_in
    return slice(group * per_group_out, (group + 1) * per_group_out), channel % per_group_in


@torch.no_grad()
def rescale_channels(net: PlainNet, index: int, scale: Tensor) -> None:
    """In place: output channel c of layer `index` times scale[c] (> 0), and the next layer's
    (or the head's) input weights on c divided by scale[c]; the net's function is unchanged."""
    layers = list(net.features)
    layer = layers[index]
    if not is_homogeneous(layer):
        raise QuantizationError(
            f"layer {index} has a {type(layer.act).__name__} activation: scaling its channels "
            "changes the function (only ReLU and identity are positively homogeneous)"
        )
    if not bool((scale > 0).all()):
        raise QuantizationError("channel scales must be > 0")
    conv = layer.conv
    s = scale.to(conv.weight.dtype)
    conv.weight.mul_(s.view(-1, 1, 1, 1))
    if conv.bias is not None:
        conv.bias.mul_(s)
    if index + 1 < len(layers):
        nxt = layers[index + 1].conv
        for c in range(conv.out_channels):
            rows, col = consumer_rows(nxt, c)
            nxt.weight[rows, col].div_(s[c])
    else:
        net.head.fc.weight.div_(s.view(1, -1))


def plant_outlier(net: nn.Module, layer_index: int, channel: int, k: float) -> PlainNet:
    """A new PlainNet where output `channel` of conv `layer_index` is scaled by `k` and the next
    layer's input weights on it by 1/k: the same fp32 function with an outlier channel."""
    plain = as_plain(net)
    n = len(plain.features)
    if not 0 <= layer_index < n:
        raise QuantizationError(f"layer_index must be in [0, {n}), got {layer_index}")
    width = plain.features[layer_index].conv.out_channels
    if not 0 <= channel < width:
        raise QuantizationError(f"channel must be in [0, {width}) for layer {layer_index}")
    if not k > 0:
        raise QuantizationError(f"k must be > 0, got {k}")
    scale = torch.ones(width, dtype=torch.float64)
    scale[channel] = float(k)
    rescale_channels(plain, layer_index, scale)
    log.info("planted an outlier: layer %d channel %d x%g", layer_index, channel, k)
    return plain
