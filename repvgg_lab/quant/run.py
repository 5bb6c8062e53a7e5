"""The whole int8 step in one call, for the deploy step and the training pipeline: equalize (if
asked), quantize in ONNX Runtime, measure accuracy and agreement, rank the layers, time it."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from repvgg_lab.quant.diagnose import layer_report, write_layer_report
from repvgg_lab.quant.equalize import equalize
from repvgg_lab.quant.evaluate import evaluate_int8, int8_latency
from repvgg_lab.quant.options import QuantOptions
from repvgg_lab.quant.plain import as_plain
from repvgg_lab.quant.ptq import quantize_net

log = logging.getLogger(__name__)

INT8_ONNX, LAYERS_JSON = "model.int8.onnx", "quant_layers.json"
REPORT_IMAGES = 64


def int8_deploy(
    net: nn.Module,
    out_dir: str | Path,
    calibration_images: Tensor,
    eval_images: Tensor,
    eval_labels: Tensor,
    options: QuantOptions | None = None,
    split: str = "test",
    fp32_onnx: str | Path | None = None,
    latency_batches: Sequence[int] = (),
    input_size: int | None = None,
) -> dict[str, Any]:
    """Write `out_dir`/model.int8.onnx and quant_layers.json for `net` and return the metrics:
    `quant/int8/<split>/acc`, `quant/int8/top1_agree`, `quant/int8/rel_max` (against the fp32
    net), `quant/int8/worst_layer`, `quant/int8/worst_sqnr_db`, and with `fp32_onnx` and
    `latency_batches` the int8-vs-fp32 latency ratios."""
    options = options or QuantOptions()
    out_dir = Path(out_dir)
    reference = as_plain(net)
    plain = equalize(reference) if options.equalize else reference
    plain_options = dataclasses.replace(options, equalize=False)
    int8 = quantize_net(plain, out_dir / INT8_ONNX, calibration_images, plain_options)
    metrics: dict[str, Any] = evaluate_int8(int8, reference, eval_images, eval_labels, split)
    rows = layer_report(plain, calibration_images[:REPORT_IMAGES], options)
    write_layer_report(out_dir / LAYERS_JSON, rows)
    metrics["quant/int8/worst_layer"] = rows[0]["name"]
    metrics["quant/int8/worst_sqnr_db"] = rows[0]["sqnr_db"]
    log.info(
        "int8: worst layer %s (%.1f dB): %s", rows[0]["name"], rows[0]["sqnr_db"], rows[0]["cause"]
    )
    if fp32_onnx is not None and latency_batches:
        size = input_size or int(calibration_images.shape[-1])
        channels = int(calibration_images.shape[1])
        metrics.update(int8_latency(fp32_onnx, int8, size, latency_batches, in_channels=channels))
    return metrics
