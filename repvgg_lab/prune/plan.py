"""Pruning plans: which output channels of each layer of a PlainNet stay, and where the removed
constants go, decided without building any net (the MACs of a plan are counted from it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from repvgg_lab.errors import PruningError
from repvgg_lab.models.plain import PlainLayer, PlainNet, activation_bounds
from repvgg_lab.prune.options import PruneOptions, Score
from repvgg_lab.reparam.prune import (
    constant_outputs,
    effective_norms,
    filter_norms,
    fold_into_bias,
    input_norms,
    select_channels,
)


def _reads_padding(conv: nn.Conv2d) -> bool:
    """True when some tap of `conv` can read padding instead of a real pixel."""
    if isinstance(conv.padding, str):
        return conv.padding != "valid"
    return any(p != 0 for p in conv.padding)


def check_prunable(net: nn.Module) -> list[PlainLayer]:
    """The layers of `net`, after checking every assumption the exactness argument relies on."""
    if not isinstance(net, PlainNet):
        raise PruningError(f"expected a PlainNet, got {type(net).__name__}; call as_plain_net()")
    layers = list(net.features)
    if not layers:
        raise PruningError("the PlainNet has no layers to prune")
    channels = layers[0].conv.in_channels
    for i, layer in enumerate(layers):
        conv = layer.conv
        if conv.bias is None:
            raise PruningError(f"layer {i}: conv has no bias (PlainNet convs carry the BN shift)")
        if conv.in_channels != channels:
            raise PruningError(f"layer {i}: expects {conv.in_channels} channels, gets {channels}")
        if not isinstance(layer.pool, nn.Identity | nn.MaxPool2d):
            # Max-pool pads with -inf, so it maps a constant map to the same constant; an
            # average pool counting zero padding would not.
            raise PruningError(f"layer {i}: {type(layer.pool).__name__} is not a max-pool")
        try:
            activation_bounds(layer.act, conv.out_channels)
        except TypeError as err:
            raise PruningError(f"layer {i}: {err}") from None
        channels = conv.out_channels
    if net.head.fc.in_features != channels:
        raise PruningError(f"head expects {net.head.fc.in_features} features, gets {channels}")
    return layers


def bounds(layer: PlainLayer) -> tuple[Tensor, Tensor]:
    """The layer's per-channel clamp bounds, float64, on its device."""
    weight = layer.conv.weight
    lower, upper = activation_bounds(layer.act, weight.shape[0])
    return lower.to(weight.device), upper.to(weight.device)


def _fold_kind(n_constant: int, consumer: nn.Conv2d | None) -> str | None:
    """Where removed constant channels go: nowhere, the head's bias, a carrier, or a bias."""
    if not n_constant:
        return None
    if consumer is None:
        return "head"
    return "carrier" if _reads_padding(consumer) else "bias"


def consumer_of(net: PlainNet, layers: list[PlainLayer], i: int) -> tuple[Tensor, int]:
    """Weight and groups of whatever reads layer i's output (the next conv, or the head)."""
    if i + 1 < len(layers):
        return layers[i + 1].conv.weight, layers[i + 1].conv.groups
    return net.head.fc.weight, 1


def _scores(norms: Tensor, consumer: tuple[Tensor, int], score: Score, normalize: bool) -> Tensor:
    """Channel scores from fused-filter norms: the norm itself ("l2"), or times the norm of the
    consumer's weights on the channel ("l2_next", how much the channel can move the next layer);
    with `normalize`, divided by the layer's mean so one global threshold treats layers alike."""
    if score == "l2_next":
        norms = norms * input_norms(*consumer)
    if normalize:
        mean = norms.mean()
        norms = norms / mean if float(mean) > 0 else norms
    return norms


def channel_scores(net: PlainNet, score: Score = "l2", normalize: bool = False) -> list[Tensor]:
    """Per-layer channel scores of the unpruned net (float64), e.g. for histograms."""
    PruneOptions(score=score, normalize=normalize)  # refuses an unknown score
    layers = check_prunable(net)
    return [
        _scores(filter_norms(layer.conv.weight), consumer_of(net, layers, i), score, normalize)
        for i, layer in enumerate(layers)
    ]


@dataclass(frozen=True)
class LayerPlan:
    """What happens to one layer's output channels."""

    keep: Tensor  # sorted kept channels, the same number per block
    bias: Tensor  # float64 bias after folding the previous layer's constants (if "bias" fold)
    constants: Tensor  # a_c = act(bias): each channel's value if its filter were zero
    blocks: int
    fold: str | None  # where removed constants go: None, "carrier", "bias" or "head"
    scores: Tensor

    @property
    def carried(self) -> Tensor | None:
        """The constants the consumer turns into carrier slices (None: no carriers)."""
        return self.constants if self.fold == "carrier" else None

    @property
    def width(self) -> int:
        return self.keep.numel() + (self.blocks if self.fold == "carrier" else 0)


def plan_layers(
    net: PlainNet,
    layers: list[PlainLayer],
    threshold: float | None,
    ratio: float | None,
    options: PruneOptions,
) -> list[LayerPlan]:
    """Decide every layer's keep set in order; scores see the previous layer's pruning."""
    plans: list[LayerPlan] = []
    for i, layer in enumerate(layers):
        conv, prev = layer.conv, plans[-1] if plans else None
        bias = conv.bias.detach().to(torch.float64)
        if prev is None:
            norms = filter_norms(conv.weight)
        else:
            if prev.fold == "bias":
                bias = fold_into_bias(conv.weight, conv.groups, bias, prev.keep, prev.constants)
            norms = effective_norms(conv.weight, conv.groups, prev.keep, prev.carried, prev.blocks)
        consumer = consumer_of(net, layers, i)
        scores = _scores(norms, consumer, options.score, options.normalize)
        last = i + 1 == len(layers)
        blocks = math.lcm(conv.groups, 1 if last else layers[i + 1].conv.groups)
        keep = select_channels(
            scores,
            threshold=threshold,
            ratio=ratio,
            blocks=blocks,
            min_keep=options.min_channels,
            multiple=options.multiple,
        )
        constants = constant_outputs(bias, *bounds(layer))
        removed = torch.ones_like(constants, dtype=torch.bool)
        removed[keep] = False
        fold = _fold_kind(
            int((removed & (constants != 0)).sum()), None if last else layers[i + 1].conv
        )
        plans.append(LayerPlan(keep, bias, constants, blocks, fold, scores))
    return plans


def layer_record(i: int, plan: LayerPlan) -> dict[str, Any]:
    """Per-layer summary; `source[j]` is the original channel of new channel j (-1: carrier)."""
    removed = torch.ones_like(plan.constants, dtype=torch.bool)
    removed[plan.keep] = False
    n_constant = int((removed & (plan.constants != 0)).sum())
    source = plan.keep.view(plan.blocks, -1)
    if plan.fold == "carrier":
        source = torch.cat([source, source.new_full((plan.blocks, 1), -1)], dim=1)
    return {
        "layer": i,
        "channels_before": plan.constants.numel(),
        "channels_after": plan.width,
        "kept": plan.keep.numel(),
        "dead": int(removed.sum()) - n_constant,
        "constant": n_constant,
        "carriers": plan.blocks if plan.fold == "carrier" else 0,
        "fold": plan.fold,
        "max_removed_score": float(plan.scores[removed].max()) if bool(removed.any()) else 0.0,
        "source": source.flatten().tolist(),
    }


def output_pixels(net: PlainNet, input_size: int | tuple[int, int]) -> list[int]:
    """Output pixels of each layer's conv for one image of `input_size`."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    pixels: list[int] = []
    hooks = [
        layer.conv.register_forward_hook(lambda m, i, out: pixels.append(out[0, 0].numel()))
        for layer in net.features
    ]
    ref = net.features[0].conv.weight
    try:
        with torch.no_grad():
            net.features(torch.zeros(1, ref.shape[1] * net.features[0].conv.groups, h, w).to(ref))
    finally:
        for hook in hooks:
            hook.remove()
    return pixels


def plan_macs(
    net: PlainNet, layers: list[PlainLayer], plans: list[LayerPlan], pixels: list[int]
) -> int:
    """MACs of the net a plan builds (what count_macs would report), without building it."""
    total, width = 0, layers[0].conv.in_channels
    for layer, plan, n in zip(layers, plans, pixels, strict=True):
        conv = layer.conv
        total += n * plan.width * (width // conv.groups) * math.prod(conv.kernel_size)
        width = plan.width
    return total + width * net.head.fc.out_features
