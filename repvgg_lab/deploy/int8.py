"""The deploy's int8 step (`quantize=int8`): the verified plain net quantized in ONNX Runtime
next to the fp32 export, measured on whole splits of `verify.data`, its layers ranked.

It runs inside the staging folder like every other export, so a failure leaves `out_dir` as it
was. The quantization itself lives in `repvgg_lab.quant` (which, like this package, builds on
`repvgg_lab.runtime`); it is imported when the step runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repvgg_lab.deploy.options import DeployOptions
from repvgg_lab.deploy.report import FILES

INT8_FILES = {"int8_onnx": "model.int8.onnx", "quant_layers": "quant_layers.json"}


@dataclass(frozen=True)
class Quantized:
    """The int8 model's metrics, the files it added to the staging folder, and the
    quantization as applied (report.json's `settings.quantize`; None without int8)."""

    metrics: dict[str, Any]
    files: dict[str, str]
    settings: dict[str, Any] | None = None


def quantize(plain: Any, real: dict[str, Any], options: DeployOptions, staging: Path) -> Quantized:
    """PTQ of `plain` calibrated on the training images in `real`, accuracy on its whole `val`
    (and `test`) splits, agreement with the fp32 plain net, int8-vs-fp32 ONNX Runtime latency
    at the deploy's latency batch sizes; nothing without `options.quantize`. `real` holds the
    loaders of `verify`; without a `test` entry the test split is the validation folder
    itself, measured once and reported for both."""
    if options.quantize is None:
        return Quantized({}, {})
    from repvgg_lab.quant import int8_deploy, int8_test_metrics
    from repvgg_lab.quant.ptq import applied_settings

    q, calibration = options.quantize, real["train"]
    files = (INT8_FILES["int8_onnx"], INT8_FILES["quant_layers"])
    metrics = int8_deploy(
        plain,
        staging,
        calibration,
        real["val"],
        None,
        q,
        split="val",
        fp32_onnx=staging / FILES["onnx"],
        latency_batches=options.batch_sizes,
        files=files,
    )
    metrics.update(int8_test_metrics(staging / files[0], plain, real.get("test"), metrics))
    return Quantized(metrics, dict(INT8_FILES), applied_settings(q, calibration))
