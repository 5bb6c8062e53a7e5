"""Post-training static quantization of a plain net's ONNX export with ONNX Runtime's own tools:
`quant_pre_process`, then `quantize_static` in QDQ format (int8 weights, uint8 activations)
calibrated on real images. Every file is written atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import onnx
from torch import nn

from repvgg_lab.errors import QuantizationError
from repvgg_lab.fileio import atomic_path
from repvgg_lab.quant.calibration import CalibrationBatches, Source, calibration_reader
from repvgg_lab.quant.options import QuantOptions
from repvgg_lab.runtime.export import export_onnx

log = logging.getLogger(__name__)


def _calibration_method(name: str) -> Any:
    """ONNX Runtime's `CalibrationMethod` for a `quantize.method` name."""
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[name]


def _extra_options(options: QuantOptions) -> dict[str, object]:
    """`quantize_static` extra options: symmetric weights, asymmetric activations, percentile."""
    # One batch per calibration step: ONNX Runtime then keeps one batch's intermediate outputs
    # at a time (folded into running min/max, or into histograms), not every batch's.
    extra: dict[str, object] = {
        "WeightSymmetric": True,
        "ActivationSymmetric": False,
        "CalibStridedMinMax": 1,
    }
    if options.method == "percentile":
        extra["CalibPercentile"] = float(options.percentile)
    return extra


def static_arguments(options: QuantOptions) -> dict[str, Any]:
    """The keyword arguments `quantize_static` gets for `options` (besides the model paths and
    the reader): built in this one place, so a report can say what was actually passed."""
    from onnxruntime.quantization import QuantFormat, QuantType

    return {
        "quant_format": QuantFormat.QDQ,
        "per_channel": options.per_channel,
        "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "calibrate_method": _calibration_method(options.method),
        "extra_options": _extra_options(options),
    }


def applied_settings(options: QuantOptions, calibration: Source) -> dict[str, Any]:
    """The quantization as applied, for reports: every option, the calibration images used
    (count and per-batch sizes) and ONNX Runtime's `quantize_static` arguments by name."""
    batches = CalibrationBatches(calibration, options.calibration_batches)
    # ONNX Runtime's enums by name, so the record is plain JSON.
    ort_args = {k: getattr(v, "name", v) for k, v in static_arguments(options).items()}
    return {
        **dataclasses.asdict(options),
        "calibration_images": batches.images,
        "calibration_batch_sizes": batches.sizes,
        "onnxruntime": ort_args,
    }


def check_qdq(proto: onnx.ModelProto) -> dict[str, int]:
    """Raise QuantizationError unless every Conv reads its input and weight through
    DequantizeLinear and its result is re-quantized (QuantizeLinear after it or after the
    activation it feeds); returns op counts."""
    producer = {out: node for node in proto.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    if not convs:
        raise QuantizationError("the int8 model has no Conv node")
    for conv in convs:
        for name in conv.input[:2]:
            src = producer.get(name)
            if src is None or src.op_type != "DequantizeLinear":
                raise QuantizationError(
                    f"Conv {conv.name!r} reads {name!r} without DequantizeLinear"
                )
        nexts = consumers.get(conv.output[0], [])
        after = [c for n in nexts for c in consumers.get(n.output[0], [])]
        if not any(n.op_type == "QuantizeLinear" for n in nexts + after):
            raise QuantizationError(f"the output of Conv {conv.name!r} is not quantized")
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def quantize_onnx(
    fp32_onnx_path: str | Path,
    int8_path: str | Path,
    calibration_images: Source | CalibrationBatches,
    options: QuantOptions | None = None,
) -> Path:
    """Quantize the fp32 ONNX model to a QDQ int8 model at `int8_path` (atomically), its
    activation ranges calibrated on `options.calibration_batches` batches of
    `calibration_images` (a tensor, or a DataLoader read batch by batch)."""
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    options = options or QuantOptions()
    if options.equalize:
        raise QuantizationError(
            "quantize.equalize changes the torch net before export: use quantize_net(net, ...)"
        )
    batches = CalibrationBatches(calibration_images, options.calibration_batches)
    reader = calibration_reader(batches)
    with tempfile.TemporaryDirectory(prefix="repvgg_quant_") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_onnx_path), str(pre))
        # ONNX Runtime's histogram calibrators print a line per step; the log line below says it.
        with atomic_path(int8_path) as out:
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(str(pre), str(out), reader, **static_arguments(options))
            check_qdq(onnx.load(str(out)))
    log.info(
        "int8 %s (%s, %s weights, %d calibration images)",
        int8_path,
        options.method,
        "per-channel" if options.per_channel else "per-tensor",
        batches.images,
    )
    return Path(int8_path)


def quantize_net(
    net: nn.Module,
    int8_path: str | Path,
    calibration_images: Source | CalibrationBatches,
    options: QuantOptions | None = None,
) -> Path:
    """Equalize `net` if `options.equalize`, export it to fp32 ONNX (a temporary file) and
    quantize that to `int8_path`; `net` itself is untouched."""
    from repvgg_lab.quant.equalize import equalize
    from repvgg_lab.quant.plain import as_plain

    options = options or QuantOptions()
    plain = as_plain(net)
    if options.equalize:
        plain = equalize(plain)
    plain_options = dataclasses.replace(options, equalize=False)
    with tempfile.TemporaryDirectory(prefix="repvgg_quant_") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        example = next(iter(CalibrationBatches(calibration_images, 1).head(1)))
        export_onnx(plain, fp32, example)
        return quantize_onnx(fp32, int8_path, calibration_images, plain_options)
