"""The whole int8 step in one call, for the deploy step and the training pipeline: equalize (if
asked), quantize in ONNX Runtime, measure accuracy and agreement, rank the layers, time it."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from repvgg_lab.quant.calibration import CalibrationBatches, Source
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
    calibration_images: Source,
    eval_images: Tensor | Iterable[tuple[Tensor, Tensor]],
    eval_labels: Tensor | None = None,
    options: QuantOptions | None = None,
    split: str = "test",
    fp32_onnx: str | Path | None = None,
    latency_batches: Sequence[int] = (),
    reference: nn.Module | None = None,
    prefix: str = "quant/int8",
    files: tuple[str, str] = (INT8_ONNX, LAYERS_JSON),
) -> dict[str, Any]:
    """Write `out_dir`/model.int8.onnx and quant_layers.json (`files`) for `net` and return the
    metrics: `<prefix>/<split>/acc`, `<prefix>/top1_agree` and `<prefix>/rel_max` against the
    fp32 `reference` (default: `net`; for QAT, the net before fine-tuning), how many images
    were measured and calibrated on (`<prefix>/images`, `<prefix>/calibration_images`),
    `<prefix>/worst_layer` and `<prefix>/worst_sqnr_db`, and with `fp32_onnx` and
    `latency_batches` the int8-vs-fp32 latency ratios. Calibration images (a tensor, or a
    DataLoader) and evaluation images (tensors, or a DataLoader of (images, labels)) are read
    batch by batch: memory does not grow with their number."""
    options = options or QuantOptions()
    out_dir = Path(out_dir)
    plain = as_plain(net)
    reference = as_plain(reference) if reference is not None else plain
    if options.equalize:
        plain = equalize(plain)
    plain_options = dataclasses.replace(options, equalize=False)
    calibration = CalibrationBatches(calibration_images, options.calibration_batches)
    int8 = quantize_net(plain, out_dir / files[0], calibration, plain_options)
    metrics: dict[str, Any] = evaluate_int8(
        int8, reference, eval_images, eval_labels, split, prefix
    )
    metrics[f"{prefix}/calibration_images"] = calibration.images
    rows = layer_report(plain, calibration, options, limit=REPORT_IMAGES)
    write_layer_report(out_dir / files[1], rows)
    metrics[f"{prefix}/worst_layer"] = rows[0]["name"]
    metrics[f"{prefix}/worst_sqnr_db"] = rows[0]["sqnr_db"]
    log.info(
        "int8: worst layer %s (%.1f dB): %s", rows[0]["name"], rows[0]["sqnr_db"], rows[0]["cause"]
    )
    if fp32_onnx is not None and latency_batches:
        example = next(iter(calibration.head(1)))
        size, channels = int(example.shape[-1]), int(example.shape[1])
        metrics.update(int8_latency(fp32_onnx, int8, size, latency_batches, in_channels=channels))
    return metrics


def int8_test_metrics(
    int8_path: str | Path,
    reference: nn.Module,
    test: Iterable[tuple[Tensor, Tensor]] | None,
    val_metrics: dict[str, Any],
    prefix: str = "quant/int8",
) -> dict[str, float]:
    """`<prefix>/test/acc` and `quant/fp32/test/acc`: measured on the `test` loader, or, with
    None (the test split is the validation folder itself, read once), the val accuracies in
    `val_metrics`."""
    keys = (f"{prefix}/test/acc", "quant/fp32/test/acc")
    if test is None:
        log.info("%s: the test split is the validation folder; its accuracy is val's", prefix)
        return {key: val_metrics[key.replace("/test/", "/val/")] for key in keys}
    measured = evaluate_int8(int8_path, reference, test, split="test", prefix=prefix)
    return {key: measured[key] for key in keys}
