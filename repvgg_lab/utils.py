"""General torch helpers every layer may use: eval-mode and TF32 scoping, CPU threads,
interleaved latency and the machine's load before it, and parameter / multiply-accumulate
counts."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn


@contextlib.contextmanager
def evaluating(*modules: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, restoring each submodule's own flag afterwards."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 on or off for CUDA matmuls and cuDNN convs for the duration (no effect on CPU)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def exact_fp32() -> contextlib.AbstractContextManager[None]:
    """Switch off TF32 (on by default for cuDNN convs) so fp32 means fp32 during a check."""
    return tf32(False)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """PyTorch's CPU thread count for the duration (ONNX Runtime sessions follow it)."""
    if threads is None:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


# Interleaved CPU latency: every round times each function once, so load changes on a shared
# machine hit all of them alike; the median over rounds is reported.


def measure_latency(
    fns: Mapping[str, Callable[[], Any]], rounds: int = 9, warmup: int = 3
) -> dict[str, dict[str, Any]]:
    """Per name: median_ms, min_ms and the per-round times_ms (aligned across names)."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        # Rotate the order so no function always runs right after the same neighbour.
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {
        name: {
            "median_ms": statistics.median(t),
            "min_ms": min(t),
            "times_ms": t,
        }
        for name, t in times.items()
    }


def machine_load() -> dict[str, Any]:
    """The 1-minute load average (`os.getloadavg`, None where the OS has none) and the cores,
    read before timing; `busy` when the load exceeds the cores. Above that, more threads wanted
    a CPU than there were CPUs over the last minute, so timed rounds waited for one. The
    timing process's own threads count in the load too (at most its `threads`, no more than
    the cores), which is why the bar is the core count and not a share of it."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"load_avg_1min": load, "cores": cores, "busy": load is not None and load > cores}


def paired_ratio(results: dict[str, dict[str, Any]], slow: str, fast: str) -> float:
    """Median over rounds of time[slow] / time[fast] (robust to load that drifts between rounds)."""
    pairs = zip(results[slow]["times_ms"], results[fast]["times_ms"], strict=True)
    return statistics.median(a / b for a, b in pairs if b > 0)


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN running statistics are not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(
    model: nn.Module, input_size: int | tuple[int, int] = 224, in_channels: int = 3
) -> int:
    """Multiply-accumulates of one forward pass on a single image (the papers' "FLOPs")."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    total = 0

    def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    p = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, h, w, dtype=p.dtype, device=p.device))
    finally:
        model.train(was_training)
        for h_ in handles:
            h_.remove()
    return int(total)
