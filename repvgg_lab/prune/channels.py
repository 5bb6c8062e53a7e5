"""Exact channel pruning of plain nets (PlainNet; RepVGG via `as_plain_net`).

Pipeline use: train with `create_model(name, gate=True)` and `loss + lam * sparsity_penalty(model)`
(`repvgg_lab.models.gates`); then `plain = as_plain_net(model)`,
`pruned, info = prune_plain(plain, threshold=0.0)` (or `prune_to_macs(plain, 0.3, input_size)`),
fine-tune `pruned`, and log `prune_summary(plain, pruned, input_size)`. The math lives in
`repvgg_lab.reparam.prune`.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from repvgg_lab.errors import PruningError
from repvgg_lab.models.plain import PlainLayer, PlainNet, activation_bounds, make_activation
from repvgg_lab.prune.calibrate import recalibrate
from repvgg_lab.prune.view import as_plain_net
from repvgg_lab.reparam.prune import (
    constant_outputs,
    effective_norms,
    filter_norms,
    fold_into_bias,
    input_norms,
    prune_inputs,
    prune_outputs,
    ratio_threshold,
    select_channels,
)
from repvgg_lab.utils import count_macs, count_params

log = logging.getLogger(__name__)

Scope = Literal["layer", "global"]
Score = Literal["l2", "l2_next"]


# ----------------------------------------------------------------------------- pruning


def _reads_padding(conv: nn.Conv2d) -> bool:
    """True when some tap of `conv` can read padding instead of a real pixel."""
    if isinstance(conv.padding, str):
        return conv.padding != "valid"
    return any(p != 0 for p in conv.padding)


def _check_prunable(net: nn.Module) -> list[PlainLayer]:
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


def _bounds(layer: PlainLayer) -> tuple[Tensor, Tensor]:
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


def _consumer(net: PlainNet, layers: list[PlainLayer], i: int) -> tuple[Tensor, int]:
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
    elif score != "l2":
        raise PruningError(f"unknown channel score {score!r}; use 'l2' or 'l2_next'")
    if normalize:
        mean = norms.mean()
        norms = norms / mean if float(mean) > 0 else norms
    return norms


def channel_scores(net: PlainNet, score: Score = "l2", normalize: bool = False) -> list[Tensor]:
    """Per-layer channel scores of the unpruned net (float64), e.g. for histograms."""
    layers = _check_prunable(net)
    return [
        _scores(filter_norms(layer.conv.weight), _consumer(net, layers, i), score, normalize)
        for i, layer in enumerate(layers)
    ]


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


@dataclass
class _LayerPlan:
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


def _plan(
    net: PlainNet,
    layers: list[PlainLayer],
    threshold: float | None,
    ratio: float | None,
    options: dict[str, Any],
) -> list[_LayerPlan]:
    """Decide every layer's keep set in order; scores see the previous layer's pruning."""
    plans: list[_LayerPlan] = []
    for i, layer in enumerate(layers):
        conv, prev = layer.conv, plans[-1] if plans else None
        bias = conv.bias.detach().to(torch.float64)
        if prev is None:
            norms = filter_norms(conv.weight)
        else:
            if prev.fold == "bias":
                bias = fold_into_bias(conv.weight, conv.groups, bias, prev.keep, prev.constants)
            norms = effective_norms(conv.weight, conv.groups, prev.keep, prev.carried, prev.blocks)
        consumer = _consumer(net, layers, i)
        scores = _scores(norms, consumer, options["score"], options["normalize"])
        last = i + 1 == len(layers)
        blocks = math.lcm(conv.groups, 1 if last else layers[i + 1].conv.groups)
        keep = select_channels(
            scores,
            threshold=threshold,
            ratio=ratio,
            blocks=blocks,
            min_keep=options["min_channels"],
            multiple=options["multiple"],
        )
        constants = constant_outputs(bias, *_bounds(layer))
        removed = torch.ones_like(constants, dtype=torch.bool)
        removed[keep] = False
        fold = _fold_kind(
            int((removed & (constants != 0)).sum()), None if last else layers[i + 1].conv
        )
        plans.append(_LayerPlan(keep, bias, constants, blocks, fold, scores))
    return plans


def _apply(net: PlainNet, layers: list[PlainLayer], plans: list[_LayerPlan]) -> PlainNet:
    """Build the pruned net of a plan; float64 folding, rounded once to the net's dtype."""
    new_layers = []
    prev: _LayerPlan | None = None
    for layer, plan in zip(layers, plans, strict=True):
        conv = layer.conv
        weight = conv.weight.detach()
        if prev is not None:
            weight = prune_inputs(weight, conv.groups, prev.keep, prev.carried, prev.blocks)
        lower, upper = _bounds(layer)
        parts = prune_outputs(
            weight, plan.bias, lower, upper, plan.keep, plan.blocks, plan.fold == "carrier"
        )
        new_layers.append(_new_layer(layer, *parts))
        prev = plan
    fc = net.head.fc
    bias = fc.bias.detach()
    if prev.fold == "head":
        # Global average pooling of a constant map is that constant: the fold is exact.
        bias = fold_into_bias(fc.weight, 1, bias, prev.keep, prev.constants)
    weight = prune_inputs(fc.weight, 1, prev.keep, None, prev.blocks)
    return PlainNet(new_layers, _new_head(net.head, weight, bias)).train(net.training)


def _record(i: int, plan: _LayerPlan) -> dict[str, Any]:
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


def _options(
    net: PlainNet,
    threshold: float | None,
    ratio: float | None,
    scope: str,
    options: dict[str, Any],
) -> tuple[list[PlainLayer], float | None, float | None]:
    """Check the options and the net; a global ratio becomes the equivalent global threshold."""
    if (threshold is None) == (ratio is None):
        raise PruningError("give exactly one of prune.threshold and prune.ratio")
    if threshold is not None and math.isnan(threshold):
        raise PruningError("prune.threshold is NaN")
    if scope not in ("layer", "global"):
        raise PruningError(f"unknown pruning scope {scope!r}; use 'layer' or 'global'")
    if ratio is not None and not 0.0 <= ratio <= 1.0:
        raise PruningError(f"prune.ratio must lie in [0, 1], got {ratio}")
    if options["min_channels"] < 1 or options["multiple"] < 1:
        raise PruningError(
            f"min_channels and multiple must be >= 1, got {options['min_channels']}, "
            f"{options['multiple']}"
        )
    layers = _check_prunable(net)
    if ratio is not None and scope == "global":
        scores = channel_scores(net, options["score"], options["normalize"])
        threshold, ratio = ratio_threshold(torch.cat(scores), ratio), None
    return layers, threshold, ratio


def prune_plain(
    net: PlainNet,
    *,
    threshold: float | None = None,
    ratio: float | None = None,
    scope: Scope = "layer",
    score: Score = "l2",
    normalize: bool = False,
    min_channels: int = 1,
    multiple: int = 1,
) -> tuple[PlainNet, dict[str, Any]]:
    """Remove output channels of every layer of `net`; returns (pruned net, summary).

    A channel goes when its score is <= `threshold`, or when it is among the lowest-scoring
    fraction `ratio` of its layer (`scope="layer"`) or of the whole net (`scope="global"`).
    The score is the fused-filter L2 norm (`score="l2"`), or that times the norm of the
    consumer's weights on the channel (`"l2_next"`: also zero for a channel nobody reads);
    `normalize` divides by each layer's mean score. Scores are taken on each layer's filters
    after the previous layer's pruning, so a channel that only read removed dead channels
    counts as zero. A removed channel is replaced by its constant output: dead ones vanish,
    constant ones go into a carrier channel (zero-padded consumers), the consumer's bias
    (padding-free consumers) or the head's bias.
    With threshold 0 the result equals `net` at every pixel up to rounding (`summary["exact"]`).
    Each layer keeps at least `min_channels` (>= 1), as a multiple of `multiple` when possible;
    layers feeding or being grouped convs remove the same number per group. `net` is untouched.
    """
    options = {
        "score": score,
        "normalize": normalize,
        "min_channels": min_channels,
        "multiple": multiple,
    }
    layers, threshold_used, ratio_used = _options(net, threshold, ratio, scope, options)
    plans = _plan(net, layers, threshold_used, ratio_used, options)
    pruned = _apply(net, layers, plans)
    records = [_record(i, plan) for i, plan in enumerate(plans)]
    summary = {
        "threshold": threshold_used,
        "ratio": ratio_used,
        "scope": scope,
        **options,
        "exact": all(r["max_removed_score"] == 0.0 for r in records),
        "channels_before": sum(r["channels_before"] for r in records),
        "channels_after": sum(r["channels_after"] for r in records),
        "layers": records,
    }
    log.info(
        "pruned %d -> %d channels (%s)",
        summary["channels_before"],
        summary["channels_after"],
        "exact" if summary["exact"] else "approximate: removed filters were not all zero",
    )
    return pruned, summary


def _input_channels(model: nn.Module) -> int:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise PruningError(f"{type(model).__name__} has no convolution")
    return conv.in_channels


def _output_pixels(net: PlainNet, input_size: int | tuple[int, int]) -> list[int]:
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


def _plan_macs(
    net: PlainNet, layers: list[PlainLayer], plans: list[_LayerPlan], pixels: list[int]
) -> int:
    """MACs of the net a plan builds (what count_macs would report), without building it."""
    total, width = 0, layers[0].conv.in_channels
    for layer, plan, n in zip(layers, plans, pixels, strict=True):
        conv = layer.conv
        total += n * plan.width * (width // conv.groups) * math.prod(conv.kernel_size)
        width = plan.width
    return total + width * net.head.fc.out_features


def prune_to_macs(
    net: PlainNet,
    reduction: float,
    input_size: int | tuple[int, int],
    *,
    scope: Scope = "global",
    score: Score = "l2",
    normalize: bool = False,
    min_channels: int = 1,
    multiple: int = 1,
) -> tuple[PlainNet, dict[str, Any]]:
    """Prune `net` just enough to remove at least a fraction `reduction` of its MACs.

    Bisects the global threshold over the channel scores (`scope="global"`) or the per-layer
    ratio (`scope="layer"`) and returns the least pruning found that meets the target; the
    summary adds `macs_before`, `macs_after` and `macs_target`."""
    if not 0.0 < reduction < 1.0:
        raise PruningError(f"MAC reduction must lie in (0, 1), got {reduction}")
    options = {
        "score": score,
        "normalize": normalize,
        "min_channels": min_channels,
        "multiple": multiple,
    }
    layers, _, _ = _options(net, 0.0, None, scope, options)  # checks the options and the net
    before = count_macs(net, input_size, layers[0].conv.in_channels)
    target = (1.0 - reduction) * before
    pixels = _output_pixels(net, input_size)
    key = "threshold" if scope == "global" else "ratio"

    @functools.cache
    def macs(value: float) -> int:
        threshold, ratio = (value, None) if key == "threshold" else (None, value)
        return _plan_macs(net, layers, _plan(net, layers, threshold, ratio, options), pixels)

    if scope == "global":
        candidates = torch.cat(channel_scores(net, score, normalize)).unique().tolist()
    else:
        # Ratios 0 .. 1 on a grid fine enough to move any layer's kept count by one.
        widest = max(layer.conv.out_channels for layer in layers)
        candidates = [j / widest for j in range(widest + 1)]
    most = macs(candidates[-1])
    if most > target:
        raise PruningError(
            f"cannot remove {reduction:.0%} of the MACs with min_channels={min_channels}, "
            f"multiple={multiple}: at most {1 - most / before:.1%}"
        )
    # Invariant: candidates[hi] meets the target, candidates[lo] (or nothing, at -1) does not.
    lo, hi = -1, len(candidates) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if macs(candidates[mid]) <= target:
            hi = mid
        else:
            lo = mid
    pruned, summary = prune_plain(net, **{key: candidates[hi]}, scope="layer", **options)
    summary["scope"] = scope
    # macs_after comes from the plan (what the bisection saw); tests check it against count_macs.
    summary.update(macs_before=before, macs_after=macs(candidates[hi]), macs_target=target)
    return pruned, summary


def prune_summary(
    before: nn.Module, after: nn.Module, input_size: int | tuple[int, int]
) -> dict[str, int]:
    """The `prune/*` parameter and MAC counts of a net before and after pruning."""
    in_channels = _input_channels(before)
    return {
        "prune/params_before": count_params(before),
        "prune/params_after": count_params(after),
        "prune/macs_before": count_macs(before, input_size, in_channels),
        "prune/macs_after": count_macs(after, input_size, in_channels),
    }


def prune_net(
    model: nn.Module,
    input_size: int | tuple[int, int],
    *,
    threshold: float | None = None,
    ratio: float | None = None,
    macs_reduction: float | None = None,
    batches: Iterable[Any] | None = None,
    max_batches: int | None = None,
    **options: Any,
) -> tuple[PlainNet, dict[str, Any]]:
    """Prune a plain-convertible `model` by exactly one criterion: a score `threshold`, a
    `ratio` of channels, or a `macs_reduction` target; returns (pruned PlainNet, summary with
    the `prune/*` counts). With calibration `batches` (real images, at most `max_batches`
    batches, held in memory), lossy pruning is followed by `recalibrate`, which restores each
    kept channel's pre-activation mean and spread (`summary["recalibrated"]`); exact pruning
    is left as it is."""
    chosen = [
        k
        for k, v in (("threshold", threshold), ("ratio", ratio), ("macs_reduction", macs_reduction))
        if v is not None
    ]
    if len(chosen) != 1:
        raise PruningError(
            "give exactly one of prune.threshold, prune.ratio or prune.macs_reduction"
            + (f" (got {', '.join(chosen)})" if chosen else "")
        )
    net = as_plain_net(model)
    if macs_reduction is not None:
        pruned, info = prune_to_macs(net, macs_reduction, input_size, **options)
    else:
        pruned, info = prune_plain(net, threshold=threshold, ratio=ratio, **options)
    info["recalibrated"] = batches is not None and not info["exact"]
    if info["recalibrated"]:
        assert batches is not None
        sources = [layer["source"] for layer in info["layers"]]
        pruned = recalibrate(pruned, net, sources, batches, max_batches)
    info.update(prune_summary(net, pruned, input_size))
    info["prune/exact"] = float(info["exact"])
    info["prune/recalibrated"] = float(info["recalibrated"])
    return pruned, info
