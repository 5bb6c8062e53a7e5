"""Run as `python -m tests.helpers.calibration_peak METHOD BATCHES`: quantize a repvgg_a0 plain
net (32 px) calibrated on BATCHES batches of 64 random images and print one JSON line: the
process's peak RSS before and after quantization (MiB), and the bytes of every conv output of
one batch (what ONNX Runtime would hold per batch if it kept them all)."""

from __future__ import annotations

import json
import resource
import sys
import tempfile
from pathlib import Path

import torch

import repvgg_lab
from repvgg_lab.quant import QuantOptions, as_plain, quantize_onnx
from repvgg_lab.runtime.export import export_onnx

BATCH, SIZE = 64, 32


def main() -> None:
    method, batches = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    plain = as_plain(
        repvgg_lab.reparameterize(repvgg_lab.create_model("repvgg_a0", num_classes=10))
    )
    images = torch.randn(batches * BATCH, 3, SIZE, SIZE)
    with torch.no_grad():
        x, per_batch = images[:BATCH], 0
        for layer in plain.features:
            x = layer(x)
            per_batch += x.numel() * x.element_size()
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(plain, Path(tmp) / "fp32.onnx", images[:1])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        options = QuantOptions(method=method, calibration_batches=batches)
        quantize_onnx(Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx", images, options)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"before_mib": before, "peak_mib": after, "batch_bytes": per_batch}))


if __name__ == "__main__":
    main()
