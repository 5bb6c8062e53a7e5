"""`prune_and_measure`: the one way the pipelines prune (train.py after conversion, deploy.py
before export): prune by `PruneOptions`, recalibrate lossy pruning, and measure the result."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn

from repvgg_lab.errors import PruningError
from repvgg_lab.models.plain import PlainNet
from repvgg_lab.prune.calibrate import recalibrate
from repvgg_lab.prune.channels import input_channels, prune_channels, prune_summary
from repvgg_lab.prune.options import PruneOptions, Scope
from repvgg_lab.prune.view import as_plain_net
from repvgg_lab.utils import measure_latency, paired_ratio

log = logging.getLogger(__name__)

Batch = Tensor | tuple[Tensor, Any] | list[Any]


@dataclass(frozen=True)
class PruneResult:
    """A pruning and what was measured about it.

    `net`: the pruned (and, if asked and lossy, recalibrated) PlainNet. `summary`: the pruning
    summary (`exact`, `recalibrated`, per-layer `source` lists, ...; docs/pruning.md section 5).
    `metrics`: the `prune/*` parameter and MAC counts, `prune/exact`, `prune/recalibrated` and,
    with `latency_rounds` > 0, `prune/latency_before_ms`, `prune/latency_after_ms` and
    `prune/speedup`."""

    net: PlainNet
    summary: dict[str, Any]
    metrics: dict[str, float]

    @property
    def exact(self) -> bool:
        """True when every removed channel scored 0: the pruned net computes the same function."""
        return bool(self.summary["exact"])


def prune_latency(
    before: nn.Module, after: nn.Module, input_size: int | tuple[int, int], rounds: int
) -> dict[str, float]:
    """Batch-1 CPU latency of a net before and after pruning, in interleaved rounds (one warm-up
    each: cheap, and as noisy as the machine is loaded): medians and the per-round ratio."""
    nets = {
        "before": copy.deepcopy(before).cpu().eval(),
        "after": copy.deepcopy(after).cpu().eval(),
    }
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    dtype = next(nets["before"].parameters()).dtype
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, input_channels(before), h, w, generator=gen).to(dtype)
    with torch.inference_mode():
        results = measure_latency({k: partial(net, x) for k, net in nets.items()}, rounds, 1)
    return {
        "prune/latency_before_ms": results["before"]["median_ms"],
        "prune/latency_after_ms": results["after"]["median_ms"],
        "prune/speedup": paired_ratio(results, "before", "after"),
    }


def prune_and_measure(
    model: nn.Module,
    options: PruneOptions,
    input_size: int | tuple[int, int],
    calibration: Iterable[Batch] | None = None,
) -> PruneResult:
    """Prune `model` (anything `as_plain_net` takes) as `options` say, at `input_size`.

    With `options.calibration_batches` > 0, `calibration` must hold batches of real images
    (tensors, or (images, labels) pairs); lossy pruning is then recalibrated on the first
    `calibration_batches` of them (`recalibrate`), exact pruning is left as it is. With
    `options.latency_rounds` > 0 the net is timed before and after. `model` is untouched."""
    if options.calibration_batches and calibration is None:
        raise PruningError(
            f"prune.calibration_batches={options.calibration_batches} needs calibration images"
        )
    net = as_plain_net(model)
    pruned, summary = prune_channels(net, options, input_size)
    recalibrated = bool(options.calibration_batches) and not summary["exact"]
    if recalibrated and calibration is not None:
        sources = [layer["source"] for layer in summary["layers"]]
        pruned = recalibrate(pruned, net, sources, calibration, options.calibration_batches)
    metrics: dict[str, float] = {
        **prune_summary(net, pruned, input_size),
        "prune/exact": float(summary["exact"]),
        "prune/recalibrated": float(recalibrated),
    }
    if options.latency_rounds:
        metrics.update(prune_latency(net, pruned, input_size, options.latency_rounds))
    log.info(
        "pruned (%s%s): MACs %d -> %d, params %d -> %d",
        "exact" if summary["exact"] else "lossy",
        ", recalibrated" if recalibrated else "",
        metrics["prune/macs_before"],
        metrics["prune/macs_after"],
        metrics["prune/params_before"],
        metrics["prune/params_after"],
    )
    return PruneResult(pruned, {**summary, "recalibrated": recalibrated}, metrics)


def prune_net(
    model: nn.Module,
    input_size: int | tuple[int, int],
    *,
    threshold: float | None = None,
    ratio: float | None = None,
    macs_reduction: float | None = None,
    batches: Iterable[Batch] | None = None,
    max_batches: int | None = None,
    scope: Scope | None = None,
    **options: Any,
) -> tuple[PlainNet, dict[str, Any]]:
    """`prune_and_measure` with the options as keywords; returns (pruned PlainNet, summary with
    the `prune/*` metrics). One criterion: a score `threshold`, a `ratio` of channels or a
    `macs_reduction` target (`scope` defaults to "layer" for a ratio, "global" for a MAC
    target). With calibration `batches` (at most `max_batches`, held in memory), lossy pruning
    is recalibrated. `options`: the other `PruneOptions` fields (score, normalize, ...)."""
    calibration = None if batches is None else list(islice(batches, max_batches))
    pruning = PruneOptions(
        threshold=threshold,
        ratio=ratio,
        macs_reduction=macs_reduction,
        scope=scope or ("global" if macs_reduction is not None else "layer"),
        calibration_batches=len(calibration) if calibration else 0,
        **options,
    )
    result = prune_and_measure(model, pruning, input_size, calibration)
    return result.net, {**result.summary, **result.metrics}
