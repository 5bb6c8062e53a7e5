"""Post-training static quantization of a plain net's ONNX export with ONNX Runtime's own tools:
`quant_pre_process`, then `quantize_static` in QDQ format (int8 weights, uint8 activations)
calibrated on real images. Every file is written atomically."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from repvgg_lab.deploy.export import ONNX_INPUT, export_onnx
from repvgg_lab.errors import QuantizationError
from repvgg_lab.fileio import atomic_path
from repvgg_lab.quant.options import QuantOptions

log = logging.getLogger(__name__)


def _calibration_method(name: str) -> Any:
    """ONNX Runtime's `CalibrationMethod` for a `quantize.method` name."""
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[name]


def calibration_chunks(images: Tensor, batches: int) -> tuple[Tensor, ...]:
    """`images` in the `batches` chunks calibration reads, every image in one of them."""
    if images.ndim != 4 or images.shape[0] < batches:
        raise QuantizationError(
            f"calibration needs a (N, C, H, W) image batch with N >= quantize.calibration_batches"
            f"={batches}, got shape {tuple(images.shape)}"
        )
    return torch.tensor_split(images, batches)


def calibration_reader(images: Tensor, batches: int, input_name: str = ONNX_INPUT) -> Any:
    """An ONNX Runtime `CalibrationDataReader` that feeds `images` in `batches` chunks."""
    from onnxruntime.quantization import CalibrationDataReader

    chunks = [c.detach().float().cpu().numpy() for c in calibration_chunks(images, batches)]

    class _Reader(CalibrationDataReader):
        """Yields {input_name: chunk} once per chunk, then None."""

        def __init__(self) -> None:
            """Start at the first chunk."""
            self._items = iter(chunks)

        def get_next(self) -> dict[str, np.ndarray] | None:
            """The next chunk as an ONNX Runtime feed, None when done."""
            chunk = next(self._items, None)
            return None if chunk is None else {input_name: chunk}

        def rewind(self) -> None:
            """Start again from the first chunk (calibrators may read twice)."""
            self._items = iter(chunks)

    return _Reader()


def _extra_options(options: QuantOptions) -> dict[str, object]:
    """`quantize_static` extra options: symmetric weights, asymmetric activations, percentile."""
    extra: dict[str, object] = {"WeightSymmetric": True, "ActivationSymmetric": False}
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


def applied_settings(options: QuantOptions, calibration_images: Tensor) -> dict[str, Any]:
    """The quantization as applied, for reports: every option, the calibration images used
    (count and per-batch sizes) and ONNX Runtime's `quantize_static` arguments by name."""
    sizes = [len(c) for c in calibration_chunks(calibration_images, options.calibration_batches)]
    # ONNX Runtime's enums by name, so the record is plain JSON.
    ort_args = {k: getattr(v, "name", v) for k, v in static_arguments(options).items()}
    return {
        **dataclasses.asdict(options),
        "calibration_images": int(calibration_images.shape[0]),
        "calibration_batch_sizes": sizes,
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
    calibration_images: Tensor,
    options: QuantOptions | None = None,
) -> Path:
    """Quantize the fp32 ONNX model to a QDQ int8 model at `int8_path` (atomically)."""
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    options = options or QuantOptions()
    if options.equalize:
        raise QuantizationError(
            "quantize.equalize changes the torch net before export: use quantize_net(net, ...)"
        )
    reader = calibration_reader(calibration_images, options.calibration_batches)
    with tempfile.TemporaryDirectory(prefix="repvgg_quant_") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_onnx_path), str(pre))
        with atomic_path(int8_path) as out:
            quantize_static(
                str(pre),
                str(out),
                reader,
                **static_arguments(options),
            )
            check_qdq(onnx.load(str(out)))
    log.info(
        "int8 %s (%s, %s weights, %d calibration images)",
        int8_path,
        options.method,
        "per-channel" if options.per_channel else "per-tensor",
        calibration_images.shape[0],
    )
    return Path(int8_path)


def quantize_net(
    net: nn.Module,
    int8_path: str | Path,
    calibration_images: Tensor,
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
        export_onnx(plain, fp32, calibration_images[:1].float())
        return quantize_onnx(fp32, int8_path, calibration_images, plain_options)
