"""Int8 accuracy and agreement with fp32, measured in ONNX Runtime over a stream of batches, and
interleaved int8-vs-fp32 latency."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from repvgg_lab.runtime import OnnxRunner, evaluate_stream, torch_fn
from repvgg_lab.utils import measure_latency, paired_ratio

log = logging.getLogger(__name__)


def _reference_fn(reference: OnnxRunner | nn.Module | str | Path) -> Callable[[Tensor], Tensor]:
    """The fp32 reference as a function of an image batch (eval mode, exact fp32 for a net)."""
    if isinstance(reference, str | Path):
        reference = OnnxRunner(reference)
    if isinstance(reference, nn.Module):
        forward = torch_fn(reference)
        return lambda x: forward(x).float()
    return reference


def evaluate_int8(
    int8_path: str | Path,
    reference: OnnxRunner | nn.Module | str | Path,
    images: Tensor | Iterable[tuple[Tensor, Tensor]],
    labels: Tensor | None = None,
    split: str = "test",
    prefix: str = "quant/int8",
) -> dict[str, float]:
    """Accuracy of the int8 model on every image (`<prefix>/<split>/acc`; `images` and
    `labels` tensors, or `images` a loader of (images, labels) batches, streamed), its top-1
    agreement and max|err|/max|ref| against the fp32 `reference` (an ONNX runner or path, or
    the torch net), the reference's own accuracy (`quant/fp32/<split>/acc`) and how many
    images were measured (`<prefix>/images`)."""
    data = (images, labels) if labels is not None else images
    nets = {"int8": OnnxRunner(int8_path), "fp32": _reference_fn(reference)}
    result = evaluate_stream(nets, data, reference="fp32", desc=f"{prefix} on {split}")
    metrics = {
        f"{prefix}/{split}/acc": result.acc["int8"],
        f"{prefix}/top1_agree": result.top1_agree["int8"],
        f"{prefix}/rel_max": result.rel_max["int8"],
        f"quant/fp32/{split}/acc": result.acc["fp32"],
        f"{prefix}/images": result.images,
    }
    log.info(
        "%s: %s acc %.4f (fp32 %.4f), top-1 agreement %.4f on %d images",
        prefix,
        split,
        metrics[f"{prefix}/{split}/acc"],
        metrics[f"quant/fp32/{split}/acc"],
        metrics[f"{prefix}/top1_agree"],
        result.images,
    )
    return metrics


def int8_latency(
    fp32_path: str | Path,
    int8_path: str | Path,
    input_size: int,
    batch_sizes: Sequence[int] = (1, 8),
    rounds: int = 9,
    warmup: int = 3,
    in_channels: int = 3,
    threads: int | None = None,
) -> dict[str, float]:
    """Interleaved ONNX Runtime CPU medians per batch size: fp32 and int8 ms and the paired
    int8/fp32 time ratio (`quant/latency/b<n>/int8_over_fp32`, < 1 means int8 is faster)."""
    fp32, int8 = OnnxRunner(fp32_path, threads), OnnxRunner(int8_path, threads)
    metrics: dict[str, float] = {}
    gen = torch.Generator().manual_seed(0)
    for n in batch_sizes:
        x = torch.randn(n, in_channels, input_size, input_size, generator=gen).numpy()
        times = measure_latency(
            {"fp32": lambda x=x: fp32.run_numpy(x), "int8": lambda x=x: int8.run_numpy(x)},
            rounds=rounds,
            warmup=warmup,
        )
        key = f"quant/latency/b{n}"
        metrics[f"{key}/fp32_ms"] = times["fp32"]["median_ms"]
        metrics[f"{key}/int8_ms"] = times["int8"]["median_ms"]
        metrics[f"{key}/int8_over_fp32"] = paired_ratio(times, "int8", "fp32")
    return metrics
