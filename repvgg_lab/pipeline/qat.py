"""`finetune.qat=true`: fine-tune the converted (and pruned) plain net through int8 fake
quantization, write its int8 model and measure it in ONNX Runtime (`quant/qat/*`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from repvgg_lab.quant import QuantOptions, int8_deploy, int8_test_metrics, qat_finetune

log = logging.getLogger(__name__)

QAT_FILES = ("model.qat.int8.onnx", "quant_layers.qat.json")


def qat_options(finetune: DictConfig) -> QuantOptions | None:
    """The `finetune.quant` node as QuantOptions when `finetune.qat` is on (checked before
    training starts: a bad option fails now, not after the run)."""
    if not finetune.get("qat"):
        return None
    node = OmegaConf.to_container(finetune.get("quant") or {}, resolve=True)
    return QuantOptions.from_mapping(node)


def run_qat(
    finetune: DictConfig, options: QuantOptions, datamodule: Any, plain: nn.Module, out: Path
) -> dict[str, Any]:
    """QAT of `plain` for `finetune.epochs` epochs at `finetune.qat_lr`; the int8 model's
    accuracy on the whole val and test splits (streamed from the data module's loaders), its
    agreement with `plain` (the net before fine-tuning: what PTQ would have quantized) and the
    per-layer report."""
    dm = datamodule
    calibration = dm.fixed_loader("train", options.calibration_batches * dm.batch_size)
    epochs, lr = int(finetune.epochs), float(finetune.qat_lr)
    tuned = qat_finetune(
        plain.cpu(), dm.train_dataloader(), epochs, lr, options, calibration_images=calibration
    )
    metrics = int8_deploy(
        tuned,
        out,
        calibration,
        dm.fixed_loader("val"),
        None,
        options,
        split="val",
        reference=plain,
        prefix="quant/qat",
        files=QAT_FILES,
    )
    test = None if dm.same_samples("test", "val") else dm.fixed_loader("test")
    on_test = int8_test_metrics(out / QAT_FILES[0], plain, test, metrics, prefix="quant/qat")
    metrics["quant/qat/test/acc"] = on_test["quant/qat/test/acc"]
    log.info("QAT int8 model: %s", out / QAT_FILES[0])
    return metrics
