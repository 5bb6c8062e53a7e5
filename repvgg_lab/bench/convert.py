"""Conversion speed: repvgg_lab.reparameterize vs timm's reparameterize_model on the same net.

Both convert a copy (inplace=False) of one multi-branch net with trained-like BN statistics, fp32
on CPU, in interleaved rounds (`repvgg_lab.utils.measure_latency`): medians per converter and the
median of the per-round ratios. Each timed call also releases that converter's copy from the
round before (one net of the same size on both sides)."""

from __future__ import annotations

import gc
import logging
import statistics
import time
from collections.abc import Callable

import timm
import torch
from timm.utils.model import reparameterize_model
from torch import nn

from repvgg_lab.bench.keys import convert_key, convert_window
from repvgg_lab.bench.result import Run
from repvgg_lab.bench.settings import Settings
from repvgg_lab.models import reparameterize
from repvgg_lab.reparam import rel_max
from repvgg_lab.testing import trained_like
from repvgg_lab.utils import measure_latency, paired_ratio

log = logging.getLogger(__name__)


def require_in_timm(name: str) -> None:
    """Raise ValueError unless timm has a model `name` to compare with."""
    known = timm.list_models("repvgg*")
    if name not in known:
        raise ValueError(f"timm has no {name!r} to compare with; choose from {', '.join(known)}")


def twin_nets(name: str) -> tuple[nn.Module, nn.Module]:
    """Our trained-like multi-branch net and timm's, holding the same weights, in eval mode."""
    require_in_timm(name)
    ours = trained_like(name, seed=0)
    theirs = timm.create_model(name).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def kernel_gap(ours: nn.Module, theirs: nn.Module) -> float:
    """Largest relative difference between the two converters' fused kernels and biases."""
    theirs_state = theirs.state_dict()
    return max(rel_max(theirs_state[k], v) for k, v in ours.state_dict().items())


def _keeping(
    convert: Callable[[], nn.Module], name: str, kept: dict[str, nn.Module], cpu: list[float]
) -> Callable[[], None]:
    """`convert` that keeps its result in kept[name] and appends its process CPU seconds."""

    def call() -> None:
        """One timed conversion."""
        start = time.process_time()
        kept[name] = convert()
        cpu.append(time.process_time() - start)

    return call


def bench_conversion(name: str, rounds: int = 7, warmup: int = 1) -> dict[str, float]:
    """Median conversion time of ours and timm's (seconds), and the median per-round ratio."""
    ours_net, timm_net = twin_nets(name)
    kept: dict[str, nn.Module] = {}
    cpu: dict[str, list[float]] = {"ours": [], "timm": []}
    converters: dict[str, Callable[[], nn.Module]] = {
        "ours": lambda: reparameterize(ours_net, inplace=False),
        "timm": lambda: reparameterize_model(timm_net, inplace=False),
    }
    fns = {side: _keeping(fn, side, kept, cpu[side]) for side, fn in converters.items()}
    gc.collect()
    with torch.no_grad():
        r = measure_latency(fns, rounds=rounds, warmup=warmup)
    metrics = {convert_key(name, "ratio_vs_timm"): paired_ratio(r, "ours", "timm")}
    for side in ("ours", "timm"):
        metrics[convert_key(name, f"{side}_s")] = r[side]["median_ms"] / 1e3
        metrics[convert_key(name, f"{side}_min_s")] = r[side]["min_ms"] / 1e3
        # CPU seconds (all threads): steadier than wall time when other jobs share the cores.
        metrics[convert_key(name, f"{side}_cpu_s")] = statistics.median(cpu[side][warmup:])
    # We time real, equivalent conversions.
    metrics[convert_key(name, "kernel_rel_diff")] = kernel_gap(kept["ours"], kept["timm"])
    return metrics


def bench_convert_section(s: Settings, run: Run) -> None:
    """Conversion time of ours vs timm's for each model (interleaved, medians)."""
    for name in s.convert_models:
        log.info("convert: %s", name)
        with run.window(convert_window(name)):
            run.metrics.update(bench_conversion(name, s.convert_rounds, s.convert_warmup))
