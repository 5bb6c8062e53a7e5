"""Per-layer int8 diagnostics: which conv of a plain net breaks int8, and why.

Each layer is quantized in PyTorch on ONNX Runtime's QDQ grids (symmetric int8 weights per
output channel or per tensor, uint8 activations with min/max ranges from the calibration images;
the tests check both grids against the int8 ONNX model) and fed the fp32 input of that layer, so
its SQNR measures that layer's own damage, not what earlier layers passed on (reading ONNX
Runtime's intermediate outputs would mix both and depends on node names). SQNRs with only the
weights or only the input activation quantized tell which of the two is the cause; the
whole-tensor weight measures show why. Activation ranges are the min/max over the report's images
(a first pass over the batches; a second accumulates the error sums, so nothing grows with the
image count) whatever `QuantOptions.method` is (the percentile and entropy methods give ONNX
Runtime narrower ranges, hence slightly other errors)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repvgg_lab.fileio import write_json
from repvgg_lab.models.plain import PlainLayer
from repvgg_lab.quant.calibration import CalibrationBatches
from repvgg_lab.quant.fakequant import (
    channel_sqnr_db,
    fake_quant_act,
    fake_quant_weight,
    noise_and_signal,
    sqnr_db,
)
from repvgg_lab.quant.options import QuantOptions
from repvgg_lab.quant.plain import as_plain


def weight_outliers(weight: Tensor) -> dict[str, float]:
    """Outlier measures of a conv weight: max|w| / std over the whole tensor, the largest
    per-channel range over the median one, and the largest per-channel max|w| over the median."""
    w = weight.detach().double()
    flat = w.flatten(1)
    ranges = flat.amax(dim=1) - flat.amin(dim=1)
    absmax = flat.abs().amax(dim=1)
    std = float(w.std()) if w.numel() > 1 else 0.0

    def ratio(values: Tensor) -> float:
        """max / median (inf when the median is 0)."""
        median = float(values.median())
        return float(values.max()) / median if median > 0 else math.inf

    return {
        "weight_absmax": float(w.abs().max()),
        "weight_max_over_std": float(w.abs().max()) / std if std > 0 else math.inf,
        "channel_range_ratio": ratio(ranges),
        "channel_absmax_ratio": ratio(absmax),
    }


def _conv(layer: PlainLayer, x: Tensor, weight: Tensor) -> Tensor:
    """The layer's conv applied with `weight` in place of its own."""
    c = layer.conv
    return F.conv2d(x, weight, c.bias, c.stride, c.padding, c.dilation, c.groups)


def _out(layer: PlainLayer, x: Tensor, weight: Tensor) -> Tensor:
    """The layer's output (conv with `weight`, activation, pooling) in fp32."""
    return layer.pool(layer.act(_conv(layer, x, weight)))


def _extend(ranges: list[tuple[float, float]], i: int, t: Tensor) -> None:
    """Widen ranges[i] to hold the values of `t`."""
    low, high = ranges[i]
    ranges[i] = (min(low, float(t.min())), max(high, float(t.max())))


Ranges = list[tuple[float, float]]


def _ranges(layers: list[PlainLayer], batches: Iterable[Tensor]) -> tuple[Ranges, Ranges]:
    """First pass: every layer's fp32 input and output range over all batches."""
    inputs: Ranges = [(math.inf, -math.inf)] * len(layers)
    outputs: Ranges = list(inputs)
    for x in batches:
        for i, layer in enumerate(layers):
            _extend(inputs, i, x)
            x = _out(layer, x, layer.conv.weight)
            _extend(outputs, i, x)
    return inputs, outputs


KINDS = ("full", "weights_only", "input_only", "chain")
Sums = dict[str, tuple[Tensor, Tensor]]


def _sums(
    layers: list[PlainLayer],
    batches: Iterable[Tensor],
    inputs: Ranges,
    outputs: Ranges,
    per_channel: bool,
) -> list[Sums]:
    """Second pass: per layer and kind of quantization (`KINDS`: input and weights, weights
    only, input only, and int8 all the way up to the layer), the per-channel noise and signal
    sums against the fp32 output, the activations on the uint8 grids of the first pass."""
    weights = [fake_quant_weight(layer.conv.weight, per_channel) for layer in layers]
    sums: list[Sums] = [{} for _ in layers]

    def add(i: int, kind: str, ref: Tensor, quantized: Tensor) -> None:
        noise, signal = noise_and_signal(ref, quantized)
        old = sums[i].get(kind)
        sums[i][kind] = (noise, signal) if old is None else (old[0] + noise, old[1] + signal)

    for x in batches:
        chain = fake_quant_act(x, *inputs[0])
        for i, layer in enumerate(layers):
            w, wq, out_range = layer.conv.weight, weights[i], outputs[i]
            xq = fake_quant_act(x, *inputs[i])
            ref = _out(layer, x, w)
            add(i, "full", ref, fake_quant_act(_out(layer, xq, wq), *out_range))
            add(i, "weights_only", ref, _out(layer, x, wq))
            add(i, "input_only", ref, _out(layer, xq, w))
            chain = fake_quant_act(_out(layer, chain, wq), *out_range)
            add(i, "chain", ref, chain)
            x = ref
    return sums


def _cause(row: dict[str, Any]) -> str:
    """One line: weights or input activation, whichever alone costs more SQNR, with the numbers."""
    if row["sqnr_weights_only_db"] <= row["sqnr_input_only_db"]:
        return (
            f"weights: max|w|/std {row['weight_max_over_std']:.1f}, largest channel range "
            f"{row['channel_range_ratio']:.1f}x the median"
        )
    return f"input activation range [{row['input_min']:.3g}, {row['input_max']:.3g}]"


def _passes(
    calibration: Tensor | CalibrationBatches, limit: int | None
) -> Callable[[], Iterable[Tensor]]:
    """A fresh pass over the report's images on every call (at most `limit` of them)."""
    if isinstance(calibration, Tensor):
        x = (calibration if limit is None else calibration[:limit]).float()
        return lambda: [x]
    return lambda: calibration.head(limit) if limit is not None else iter(calibration)


@torch.no_grad()
def layer_report(
    net: nn.Module,
    calibration_images: Tensor | CalibrationBatches,
    options: QuantOptions | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """One row per conv layer, worst int8 SQNR first (rank 1): SQNRs in dB (`sqnr_db` weighs
    every output channel alike, `sqnr_tensor_db` is over the whole tensor), the weight outlier
    measures, the activation ranges, the chained SQNR (int8 up to and including the layer) and a
    one-line `cause`. Over the first `limit` calibration images (all: None), read in two passes
    batch by batch (ranges, then error sums), so memory holds one batch's activations."""
    options = options or QuantOptions()
    layers = list(as_plain(net).float().features)
    passes = _passes(calibration_images, limit)
    inputs, outputs = _ranges(layers, passes())
    if not layers or inputs[0][0] > inputs[0][1]:
        raise ValueError("layer_report needs a net with conv layers and at least one image")
    sums = _sums(layers, passes(), inputs, outputs, options.per_channel)
    rows = []
    for i, layer in enumerate(layers):
        c = layer.conv
        row: dict[str, Any] = {"layer": i, "name": f"features.{i}"}
        row["shape"] = [c.out_channels, c.in_channels // c.groups, *c.kernel_size]
        row["groups"] = c.groups
        row["sqnr_db"] = channel_sqnr_db(*sums[i]["full"])
        row["sqnr_tensor_db"] = sqnr_db(*sums[i]["full"])
        row["sqnr_weights_only_db"] = channel_sqnr_db(*sums[i]["weights_only"])
        row["sqnr_input_only_db"] = channel_sqnr_db(*sums[i]["input_only"])
        row.update(zip(("input_min", "input_max"), inputs[i], strict=True))
        row.update(zip(("output_min", "output_max"), outputs[i], strict=True))
        row.update(weight_outliers(c.weight))
        row["sqnr_chain_db"] = channel_sqnr_db(*sums[i]["chain"])
        row["cause"] = _cause(row)
        row["weights"] = "per-channel" if options.per_channel else "per-tensor"
        rows.append(row)
    rows.sort(key=lambda r: r["sqnr_db"])
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def write_layer_report(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write `quant_layers.json` ({"layers": rows, "worst": the first row's name}) atomically."""
    worst = rows[0]["name"] if rows else None
    return write_json(path, {"layers": rows, "worst": worst})
