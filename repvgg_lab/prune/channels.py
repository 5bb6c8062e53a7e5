"""Exact channel pruning of plain nets (PlainNet; RepVGG via `as_plain_net`).

`prune_channels(plain, PruneOptions(...), input_size)` prunes by the options' one criterion;
`prune_plain` (threshold or ratio) and `prune_to_macs` (a MAC target) take the options as
keywords. Plans are made in `repvgg_lab.prune.plan`, nets built in `repvgg_lab.prune.build`, the
math lives in `repvgg_lab.reparam.prune`; `repvgg_lab.prune.measure.prune_and_measure` adds
recalibration and the `prune/*` metrics.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from repvgg_lab.errors import PruningError
from repvgg_lab.models.plain import PlainLayer, PlainNet
from repvgg_lab.prune.build import build_pruned
from repvgg_lab.prune.options import PruneOptions, Scope, Score
from repvgg_lab.prune.plan import (
    channel_scores,
    check_prunable,
    layer_record,
    output_pixels,
    plan_layers,
    plan_macs,
)
from repvgg_lab.reparam.prune import ratio_threshold
from repvgg_lab.utils import count_macs, count_params

log = logging.getLogger(__name__)


def _prune(
    net: PlainNet,
    layers: list[PlainLayer],
    threshold: float | None,
    ratio: float | None,
    options: PruneOptions,
) -> tuple[PlainNet, dict[str, Any]]:
    """Plan, build and summarise one pruning by a threshold or a per-layer ratio."""
    plans = plan_layers(net, layers, threshold, ratio, options)
    pruned = build_pruned(net, layers, plans)
    records = [layer_record(i, plan) for i, plan in enumerate(plans)]
    summary = {
        "threshold": threshold,
        "ratio": ratio,
        "scope": options.scope,
        "score": options.score,
        "normalize": options.normalize,
        "min_channels": options.min_channels,
        "multiple": options.multiple,
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


def _by_score(net: PlainNet, options: PruneOptions) -> tuple[PlainNet, dict[str, Any]]:
    """Prune by `options.threshold` or `options.ratio`; a global ratio becomes the equivalent
    global threshold."""
    layers = check_prunable(net)
    threshold, ratio = options.threshold, options.ratio
    if ratio is not None and options.scope == "global":
        scores = channel_scores(net, options.score, options.normalize)
        threshold, ratio = ratio_threshold(torch.cat(scores), ratio), None
    return _prune(net, layers, threshold, ratio, options)


def _least(candidates: list[float], macs: Callable[[float], int], target: float) -> float:
    """The first candidate (least pruning) whose plan meets the MAC target, by bisection; the
    caller has checked that the last one does."""
    # Invariant: candidates[hi] meets the target, candidates[lo] (or nothing, at -1) does not.
    lo, hi = -1, len(candidates) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if macs(candidates[mid]) <= target:
            hi = mid
        else:
            lo = mid
    return candidates[hi]


def _to_macs(
    net: PlainNet, options: PruneOptions, input_size: int | tuple[int, int]
) -> tuple[PlainNet, dict[str, Any]]:
    """The least pruning that removes `options.macs_reduction` of the MACs: bisection over the
    global threshold (scope "global") or the per-layer ratio (scope "layer")."""
    layers = check_prunable(net)
    reduction = options.macs_reduction or 0.0
    before = count_macs(net, input_size, layers[0].conv.in_channels)
    target = (1.0 - reduction) * before
    pixels = output_pixels(net, input_size)
    by_threshold = options.scope == "global"

    @functools.cache
    def macs(value: float) -> int:
        threshold, ratio = (value, None) if by_threshold else (None, value)
        return plan_macs(net, layers, plan_layers(net, layers, threshold, ratio, options), pixels)

    if by_threshold:
        candidates = torch.cat(channel_scores(net, options.score, options.normalize))
        candidates = candidates.unique().tolist()
    else:
        # Ratios 0 .. 1 on a grid fine enough to move any layer's kept count by one.
        widest = max(layer.conv.out_channels for layer in layers)
        candidates = [j / widest for j in range(widest + 1)]
    most = macs(candidates[-1])
    if most > target:
        raise PruningError(
            f"cannot remove {reduction:.0%} of the MACs with min_channels={options.min_channels}, "
            f"multiple={options.multiple}: at most {1 - most / before:.1%}"
        )
    value = _least(candidates, macs, target)
    threshold, ratio = (value, None) if by_threshold else (None, value)
    pruned, summary = _prune(net, layers, threshold, ratio, options)
    # macs_after comes from the plan (what the bisection saw); tests check it against count_macs.
    summary.update(macs_before=before, macs_after=macs(value), macs_target=target)
    return pruned, summary


def prune_channels(
    net: PlainNet, options: PruneOptions, input_size: int | tuple[int, int] | None = None
) -> tuple[PlainNet, dict[str, Any]]:
    """Prune `net` by the options' criterion; returns (pruned net, summary). `input_size`
    (H = W, or (H, W)) is needed for `macs_reduction` only. `net` is untouched."""
    if options.macs_reduction is None:
        return _by_score(net, options)
    if input_size is None:
        raise PruningError("prune.macs_reduction needs the input size to count MACs at")
    return _to_macs(net, options, input_size)


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
    fraction `ratio` of its layer (`scope="layer"`) or of the whole net (`scope="global"`);
    neither given means threshold 0.
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
    The options are checked by `PruneOptions` (one-line `PruningError`).
    """
    options = PruneOptions(
        threshold=threshold,
        ratio=ratio,
        scope=scope,
        score=score,
        normalize=normalize,
        min_channels=min_channels,
        multiple=multiple,
    )
    return _by_score(net, options)


def prune_to_macs(
    net: PlainNet,
    reduction: float,
    input_size: int | tuple[int, int],
    *,
    scope: Scope = "global",
    **options: Any,
) -> tuple[PlainNet, dict[str, Any]]:
    """Prune `net` just enough to remove at least a fraction `reduction` of its MACs.

    Bisects the global threshold over the channel scores (`scope="global"`) or the per-layer
    ratio (`scope="layer"`) and returns the least pruning found that meets the target; the
    summary adds `macs_before`, `macs_after` and `macs_target`. `options`: `score`,
    `normalize`, `min_channels` and `multiple`, as for `prune_plain`."""
    pruning = PruneOptions(macs_reduction=reduction, scope=scope, **options)
    return _to_macs(net, pruning, input_size)


def input_channels(model: nn.Module) -> int:
    """The input channels of the first convolution of `model`."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise PruningError(f"{type(model).__name__} has no convolution")
    return conv.in_channels


def prune_summary(
    before: nn.Module, after: nn.Module, input_size: int | tuple[int, int]
) -> dict[str, int]:
    """The `prune/*` parameter and MAC counts of a net before and after pruning."""
    in_channels = input_channels(before)
    return {
        "prune/params_before": count_params(before),
        "prune/params_after": count_params(after),
        "prune/macs_before": count_macs(before, input_size, in_channels),
        "prune/macs_after": count_macs(after, input_size, in_channels),
    }


def __getattr__(name: str) -> Any:
    """`from repvgg_lab.prune.channels import prune_net` (its home before prune/measure.py)
    keeps working; new code imports it from `repvgg_lab.prune`."""
    if name == "prune_net":
        from repvgg_lab.prune.measure import prune_net

        return prune_net
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
