"""Channel pruning of plain nets, RepVGG -> PlainNet, and the sparsity-training helpers.

Pipeline use: train with `create_model(name, gate=True)` and `loss + lam * sparsity_penalty(model)`;
then `plain = as_plain_net(model)`, `pruned, info = prune_plain(plain, threshold=0.0)` (or
`prune_to_macs(plain, 0.3, input_size)`), fine-tune `pruned`, and log
`prune_summary(plain, pruned, input_size)`. The math lives in `repvgg_lab.reparam.prune`.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from repvgg_lab.errors import InputError
from repvgg_lab.models.convert import reparameterize
from repvgg_lab.models.cost import count_macs, count_params
from repvgg_lab.models.plain import PlainLayer, PlainNet, activation_bounds, make_activation
from repvgg_lab.models.repvgg import RepVGG
from repvgg_lab.reparam.prune import (
    constant_outputs,
    filter_norms,
    fold_into_bias,
    input_norms,
    prune_inputs,
    prune_outputs,
    ratio_threshold,
    select_channels,
)

log = logging.getLogger(__name__)

Scope = Literal["layer", "global"]
Score = Literal["l2", "l2_next"]


class PruningError(InputError):
    """A model or an option that pruning cannot handle; the message says why."""


# ----------------------------------------------------------------------------- sparsity training


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every per-channel gate (`module.gate` parameters, e.g. RepVGGBlock(gate=True)) in `model`."""
    return [m.gate for m in model.modules() if isinstance(getattr(m, "gate", None), nn.Parameter)]


def sparsity_penalty(model: nn.Module) -> Tensor:
    """L1 norm of all channel gates (sum of |g|); the loss gets `lam * sparsity_penalty(model)`."""
    gates = gate_parameters(model)
    if not gates:
        raise PruningError(
            f"{type(model).__name__} has no channel gates; build it with gate=True "
            "(e.g. create_model(name, gate=True)) to train with a sparsity penalty"
        )
    return torch.stack([g.abs().sum() for g in gates]).sum()


def shrink_gates_(model: nn.Module, amount: float) -> int:
    """Proximal L1 step after an optimizer step: g <- sign(g) * max(|g| - amount, 0) (use
    amount = lr * lam). Unlike the penalty's gradient it sets gates exactly to 0, which makes
    those channels exactly dead; returns how many gates are now 0."""
    if amount < 0:
        raise ValueError(f"shrink amount must be >= 0, got {amount}")
    zeros = 0
    with torch.no_grad():
        for g in gate_parameters(model):
            g.copy_(torch.sign(g) * torch.clamp(g.abs() - amount, min=0.0))
            zeros += int((g == 0).sum())
    return zeros


# ----------------------------------------------------------------------------- plain form


def _repvgg_blocks(model: RepVGG) -> list[nn.Module]:
    return [model.stem, *(block for stage in model.stages for block in stage)]


def as_plain_net(model: nn.Module) -> PlainNet:
    """The PlainNet computing the same function as `model` (a PlainNet is returned as is).

    A RepVGG is re-parameterized first if needed (float64 fusion, `model` untouched); its deploy
    convs and head are copied unchanged, so outputs are bitwise equal. SE models are refused."""
    if isinstance(model, PlainNet):
        return model
    if not isinstance(model, RepVGG):
        raise PruningError(
            f"{type(model).__name__} has no PlainNet form; pruning supports RepVGG models "
            "(without SE) and PlainNet (e.g. RMNet's plain conversion)"
        )
    if any(not isinstance(block.attn, nn.Identity) for block in _repvgg_blocks(model)):
        raise PruningError(
            "squeeze-excitation blocks (e.g. repvgg_d2se) scale channels by an input-dependent "
            "factor, so the model is not a plain conv chain and cannot be channel-pruned"
        )
    deployed = model if all(b.deploy for b in _repvgg_blocks(model)) else reparameterize(model)
    layers = [
        PlainLayer(copy.deepcopy(block.reparam_conv), copy.deepcopy(block.act))
        for block in _repvgg_blocks(deployed)
    ]
    net = PlainNet(layers, copy.deepcopy(deployed.head))
    return net.train(model.training)


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


def _scores(weight: Tensor, consumer: tuple[Tensor, int], score: Score, normalize: bool) -> Tensor:
    """Channel scores: fused-filter L2 norm ("l2"), or that times the norm of the consumer's
    weights on the channel ("l2_next", how much the channel can move the next layer); with
    `normalize`, divided by the layer's mean so one global threshold treats layers alike."""
    scores = filter_norms(weight)
    if score == "l2_next":
        scores = scores * input_norms(*consumer)
    elif score != "l2":
        raise PruningError(f"unknown channel score {score!r}; use 'l2' or 'l2_next'")
    if normalize:
        mean = scores.mean()
        scores = scores / mean if float(mean) > 0 else scores
    return scores


def channel_scores(net: PlainNet, score: Score = "l2", normalize: bool = False) -> list[Tensor]:
    """Per-layer channel scores of the unpruned net (float64), e.g. for histograms."""
    layers = _check_prunable(net)
    return [
        _scores(layer.conv.weight, _consumer(net, layers, i), score, normalize)
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
    counts as zero. A removed channel
    is replaced by its constant output: dead ones vanish, constant ones go into a carrier channel
    (zero-padded consumers), the consumer's bias (padding-free consumers) or the head's bias.
    With threshold 0 the result equals `net` at every pixel up to rounding (`summary["exact"]`).
    Each layer keeps at least `min_channels` (>= 1), as a multiple of `multiple` when possible;
    layers feeding or being grouped convs remove the same number per group. `net` is untouched.
    """
    if (threshold is None) == (ratio is None):
        raise PruningError("give exactly one of prune.threshold and prune.ratio")
    if threshold is not None and math.isnan(threshold):
        raise PruningError("prune.threshold is NaN")
    if scope not in ("layer", "global"):
        raise PruningError(f"unknown pruning scope {scope!r}; use 'layer' or 'global'")
    if ratio is not None and not 0.0 <= ratio <= 1.0:
        raise PruningError(f"prune.ratio must lie in [0, 1], got {ratio}")
    if min_channels < 1 or multiple < 1:
        raise PruningError(
            f"min_channels and multiple must be >= 1, got {min_channels}, {multiple}"
        )
    layers = _check_prunable(net)
    if ratio is not None and scope == "global":
        all_scores = torch.cat(channel_scores(net, score, normalize))
        threshold, ratio = ratio_threshold(all_scores, ratio), None

    new_layers, records = [], []
    incoming: tuple[Tensor, Tensor | None, int, str | None] | None = None
    for i, layer in enumerate(layers):
        conv = layer.conv
        weight, bias = conv.weight.detach(), conv.bias.detach()
        if incoming is not None:
            keep_in, constants_in, blocks_in, fold_in = incoming
            if fold_in == "bias":
                bias = fold_into_bias(weight, conv.groups, bias, keep_in, constants_in)
            carried = constants_in if fold_in == "carrier" else None
            weight = prune_inputs(weight, conv.groups, keep_in, carried, blocks_in)
        lower, upper = activation_bounds(layer.act, conv.out_channels)
        last = i + 1 == len(layers)
        blocks = math.lcm(conv.groups, 1 if last else layers[i + 1].conv.groups)
        scores = _scores(weight, _consumer(net, layers, i), score, normalize)
        keep = select_channels(
            scores,
            threshold=threshold,
            ratio=ratio,
            blocks=blocks,
            min_keep=min_channels,
            multiple=multiple,
        )
        removed = torch.ones(conv.out_channels, dtype=torch.bool, device=keep.device)
        removed[keep] = False
        constants = constant_outputs(bias, lower, upper)
        n_constant = int((removed & (constants != 0)).sum())
        fold = _fold_kind(n_constant, None if last else layers[i + 1].conv)
        carriers = fold == "carrier"
        new_layers.append(
            _new_layer(layer, *prune_outputs(weight, bias, lower, upper, keep, blocks, carriers))
        )
        source = keep.view(blocks, -1)
        if carriers:
            source = torch.cat([source, source.new_full((blocks, 1), -1)], dim=1)
        records.append(
            {
                "layer": i,
                "channels_before": conv.out_channels,
                "channels_after": source.numel(),
                "kept": keep.numel(),
                "dead": int(removed.sum()) - n_constant,
                "constant": n_constant,
                "carriers": blocks if carriers else 0,
                "fold": fold,
                "max_removed_score": float(scores[removed].max()) if bool(removed.any()) else 0.0,
                "source": source.flatten().tolist(),
            }
        )
        incoming = (keep, constants, blocks, fold)

    keep_in, constants_in, blocks_in, fold_in = incoming
    fc = net.head.fc
    fc_bias = fc.bias.detach()
    if fold_in == "head":
        # Global average pooling of a constant map is that constant: the fold is exact.
        fc_bias = fold_into_bias(fc.weight, 1, fc_bias, keep_in, constants_in)
    fc_weight = prune_inputs(fc.weight, 1, keep_in, None, blocks_in)
    pruned = PlainNet(new_layers, _new_head(net.head, fc_weight, fc_bias)).train(net.training)

    summary = {
        "threshold": threshold,
        "ratio": ratio,
        "scope": scope,
        "score": score,
        "normalize": normalize,
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
    in_channels = _input_channels(net)
    before = count_macs(net, input_size, in_channels)
    target = (1.0 - reduction) * before
    options = {
        "scope": scope,
        "score": score,
        "normalize": normalize,
        "min_channels": min_channels,
        "multiple": multiple,
    }

    def attempt(value: float) -> tuple[PlainNet, dict[str, Any], int]:
        key = "threshold" if scope == "global" else "ratio"
        pruned, summary = prune_plain(net, **{key: value}, **options)
        return pruned, summary, count_macs(pruned, input_size, in_channels)

    if scope == "global":
        candidates = torch.cat(channel_scores(net, score, normalize)).unique().tolist()
    else:
        # Ratios 0 .. 1 on a grid fine enough to move any layer's kept count by one.
        widest = max(layer.conv.out_channels for layer in net.features)
        candidates = [j / widest for j in range(widest + 1)]
    best = attempt(candidates[-1])
    if best[2] > target:
        raise PruningError(
            f"cannot remove {reduction:.0%} of the MACs with min_channels={min_channels}, "
            f"multiple={multiple}: at most {1 - best[2] / before:.1%}"
        )
    # Invariant: candidates[hi] meets the target, candidates[lo] (or nothing, at -1) does not.
    lo, hi = -1, len(candidates) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        result = attempt(candidates[mid])
        if result[2] <= target:
            hi, best = mid, result
        else:
            lo = mid
    pruned, summary, after = best
    summary.update(macs_before=before, macs_after=after, macs_target=target)
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
