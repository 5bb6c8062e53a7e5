"""Int8 for plain nets: ONNX Runtime post-training quantization (calibrated batch by batch),
per-layer diagnostics, outlier planting, cross-layer equalization and quantization-aware
fine-tuning."""

from repvgg_lab.quant.calibration import CalibrationBatches
from repvgg_lab.quant.diagnose import layer_report, weight_outliers, write_layer_report
from repvgg_lab.quant.equalize import equalize
from repvgg_lab.quant.evaluate import evaluate_int8, int8_latency
from repvgg_lab.quant.options import METHODS, QuantOptions, check_precision
from repvgg_lab.quant.plain import as_plain, plant_outlier
from repvgg_lab.quant.ptq import check_qdq, quantize_net, quantize_onnx
from repvgg_lab.quant.qat import export_qat, qat_finetune
from repvgg_lab.quant.run import INT8_ONNX, LAYERS_JSON, int8_deploy, int8_test_metrics

__all__ = [
    "CalibrationBatches",
    "INT8_ONNX",
    "LAYERS_JSON",
    "METHODS",
    "QuantOptions",
    "as_plain",
    "check_precision",
    "check_qdq",
    "equalize",
    "evaluate_int8",
    "export_qat",
    "int8_deploy",
    "int8_latency",
    "int8_test_metrics",
    "layer_report",
    "plant_outlier",
    "qat_finetune",
    "quantize_net",
    "quantize_onnx",
    "weight_outliers",
    "write_layer_report",
]
