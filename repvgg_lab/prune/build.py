"""Building the pruned PlainNet of a plan: float64 folding, rounded once to the net's dtype."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from repvgg_lab.models.plain import PlainLayer, PlainNet, make_activation
from repvgg_lab.prune.plan import LayerPlan, bounds
from repvgg_lab.reparam.prune import fold_into_bias, prune_inputs, prune_outputs


def _new_layer(
    old: PlainLayer, weight: Tensor, bias: Tensor, lower: Tensor, upper: Tensor
) -> PlainLayer:
    """A PlainLayer like `old` with new float64 parameters rounded once to its dtype."""
    c = old.conv
    conv = skip_init(
        nn.Conv2d,
        weight.shape[1] * c.groups,
        weight.shape[0],
        c.kernel_size,
        stride=c.stride,
        padding=c.padding,
        dilation=c.dilation,
        groups=c.groups,
        bias=True,
        padding_mode=c.padding_mode,
        device=c.weight.device,
        dtype=c.weight.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    ref = c.weight
    act = make_activation(lower.to(ref.device, ref.dtype), upper.to(ref.device, ref.dtype))
    return PlainLayer(conv, act, copy.deepcopy(old.pool))


def _new_head(old: nn.Module, weight: Tensor, bias: Tensor) -> nn.Module:
    """A copy of the head `old` whose classifier gets the new float64 weights, rounded once."""
    fc = old.fc
    head = copy.deepcopy(old)
    head.fc = skip_init(
        nn.Linear,
        weight.shape[1],
        weight.shape[0],
        device=fc.weight.device,
        dtype=fc.weight.dtype,
    )
    with torch.no_grad():
        head.fc.weight.copy_(weight)
        head.fc.bias.copy_(bias)
    return head


def build_pruned(net: PlainNet, layers: list[PlainLayer], plans: list[LayerPlan]) -> PlainNet:
    """Build the pruned net of a plan; float64 folding, rounded once to the net's dtype."""
    new_layers = []
    for i, (layer, plan) in enumerate(zip(layers, plans, strict=True)):
        conv = layer.conv
        weight = conv.weight.detach()
        if i > 0:
            prev = plans[i - 1]
            weight = prune_inputs(weight, conv.groups, prev.keep, prev.carried, prev.blocks)
        lower, upper = bounds(layer)
        parts = prune_outputs(
            weight, plan.bias, lower, upper, plan.keep, plan.blocks, plan.fold == "carrier"
        )
        new_layers.append(_new_layer(layer, *parts))
    fc, prev = net.head.fc, plans[-1]  # check_prunable guarantees at least one layer
    bias = fc.bias.detach()
    if prev.fold == "head":
        # Global average pooling of a constant map is that constant: the fold is exact.
        bias = fold_into_bias(fc.weight, 1, bias, prev.keep, prev.constants)
    weight = prune_inputs(fc.weight, 1, prev.keep, None, prev.blocks)
    return PlainNet(new_layers, _new_head(net.head, weight, bias)).train(net.training)
