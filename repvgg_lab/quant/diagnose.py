"""Per-layer int8 diagnostics: which conv of a plain net breaks int8, and why.

Each layer is quantized in PyTorch on ONNX Runtime's QDQ grids (symmetric int8 weights per
output channel or per tensor, uint8 activations with min/max ranges from the calibration batch;
the tests check both grids against the int8 ONNX model) and fed the fp32 input of that layer, so
its SQNR measures that layer's own damage, not what earlier layers passed on (reading ONNX
Runtime's intermediate outputs would mix both and depends on node names). SQNRs with only the
weights or only the input activation quantized tell which of the two is the cause; the
whole-tensor weight measures show why. Activation ranges are the calibration batch's min/max
whatever `QuantOptions.method` is (the percentile and entropy methods give ONNX Runtime narrower
ranges, hence slightly other errors)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repvgg_lab.fileio import write_json
from repvgg_lab.models.plain import PlainLayer
from repvgg_lab.quant.fakequant import (
    channel_sqnr_db,
    fake_quant_act,
    fake_quant_weight,
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


def _layer_rows(layer: PlainLayer, x: Tensor, per_channel: bool) -> dict[str, float]:
    """SQNRs of one layer's output (after activation) against fp32, given its fp32 input."""
    w = layer.conv.weight
    wq = fake_quant_weight(w, per_channel)
    xq = fake_quant_act(x, float(x.min()), float(x.max()))
    ref = layer.pool(layer.act(_conv(layer, x, w)))
    low, high = float(ref.min()), float(ref.max())

    def out(inp: Tensor, weight: Tensor) -> Tensor:
        """The layer on `inp` with `weight`, its output on the uint8 grid of the fp32 range."""
        return fake_quant_act(layer.pool(layer.act(_conv(layer, inp, weight))), low, high)

    full = out(xq, wq)
    return {
        "sqnr_db": channel_sqnr_db(ref, full),
        "sqnr_tensor_db": sqnr_db(ref, full),
        "sqnr_weights_only_db": channel_sqnr_db(ref, layer.pool(layer.act(_conv(layer, x, wq)))),
        "sqnr_input_only_db": channel_sqnr_db(ref, layer.pool(layer.act(_conv(layer, xq, w)))),
        "input_min": float(x.min()),
        "input_max": float(x.max()),
        "output_min": low,
        "output_max": high,
    }


def _cause(row: dict[str, Any]) -> str:
    """One line: weights or input activation, whichever alone costs more SQNR, with the numbers."""
    if row["sqnr_weights_only_db"] <= row["sqnr_input_only_db"]:
        return (
            f"weights: max|w|/std {row['weight_max_over_std']:.1f}, largest channel range "
            f"{row['channel_range_ratio']:.1f}x the median"
        )
    return f"input activation range [{row['input_min']:.3g}, {row['input_max']:.3g}]"


@torch.no_grad()
def layer_report(
    net: nn.Module, calibration_images: Tensor, options: QuantOptions | None = None
) -> list[dict[str, Any]]:
    """One row per conv layer, worst int8 SQNR first (rank 1): SQNRs in dB (`sqnr_db` weighs
    every output channel alike, `sqnr_tensor_db` is over the whole tensor), the weight outlier
    measures, the activation ranges, the chained SQNR (int8 up to and including the layer) and a
    one-line `cause`."""
    options = options or QuantOptions()
    plain = as_plain(net).float()
    x = calibration_images.float()
    chain = fake_quant_act(x, float(x.min()), float(x.max()))
    rows = []
    for i, layer in enumerate(plain.features):
        c = layer.conv
        row: dict[str, Any] = {"layer": i, "name": f"features.{i}"}
        row["shape"] = [c.out_channels, c.in_channels // c.groups, *c.kernel_size]
        row["groups"] = c.groups
        row.update(_layer_rows(layer, x, options.per_channel))
        row.update(weight_outliers(c.weight))
        x = layer(x)
        wq = fake_quant_weight(c.weight, options.per_channel)
        chain = layer.pool(layer.act(_conv(layer, chain, wq)))
        chain = fake_quant_act(chain, row["output_min"], row["output_max"])
        row["sqnr_chain_db"] = channel_sqnr_db(x, chain)
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
