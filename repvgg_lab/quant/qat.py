"""Quantization-aware fine-tuning of a plain net, then int8 export with ONNX Runtime.

Chosen route (option B of the design): fake quantization in plain PyTorch with exactly the
scheme ONNX Runtime's static QDQ quantizer applies afterwards (symmetric int8 weights, per
channel or per tensor from max|w|; uint8 activations with observed min/max ranges), straight-
through gradients, a plain training loop. The fine-tuned fp32 weights are then exported and
quantized by `quantize_net`, calibrated on the QAT net's own activations. Why not torchao's PT2E
flow: its X86 Inductor quantizer targets Inductor kernels, and turning its converted graph into
an ONNX Runtime QDQ model means a second exporter path to trust; here the int8 model deploy
produces and the one QAT produces come out of the same ONNX Runtime quantizer, so their
accuracies compare like for like. Each conv's input and weights are fake-quantized (the input
of layer l+1 is the output of layer l, so that covers the outputs too); the pooled linear head
stays fp32 during fine-tuning and is quantized by ONNX Runtime afterwards."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from repvgg_lab.errors import QuantizationError
from repvgg_lab.models.plain import PlainLayer, PlainNet
from repvgg_lab.quant.calibration import CalibrationBatches
from repvgg_lab.quant.fakequant import RangeObserver, fake_quant_act, fake_quant_weight
from repvgg_lab.quant.options import QuantOptions
from repvgg_lab.quant.plain import as_plain
from repvgg_lab.quant.ptq import quantize_net

log = logging.getLogger(__name__)


class FakeQuantLayer(nn.Module):
    """A PlainLayer whose input and weights go through int8 fake quantization."""

    def __init__(self, layer: PlainLayer, per_channel: bool, momentum: float) -> None:
        """Wrap `layer` (parameters shared) with an input range observer."""
        super().__init__()
        self.layer = layer
        self.per_channel = per_channel
        self.observer = RangeObserver(momentum)

    def forward(self, x: Tensor) -> Tensor:
        """Observe (in training), fake-quantize input and weights, then conv, act, pool."""
        if self.training:
            self.observer.observe(x)
        x = fake_quant_act(x, *self.observer.range())
        c = self.layer.conv
        w = fake_quant_weight(c.weight, self.per_channel)
        y = F.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)
        return self.layer.pool(self.layer.act(y))


class FakeQuantNet(nn.Module):
    """A PlainNet with every conv layer fake-quantized; `plain` shares its parameters."""

    def __init__(self, plain: PlainNet, per_channel: bool, momentum: float = 0.01) -> None:
        """Wrap every layer of `plain`; observers follow ranges by EMA with `momentum`."""
        super().__init__()
        self.plain = plain
        layers = [FakeQuantLayer(m, per_channel, momentum) for m in plain.features]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        """Fake-quantized features, then the fp32 head."""
        for layer in self.layers:
            x = layer(x)
        return self.plain.head(x)

    @torch.no_grad()
    def calibrate(self, batches: Iterable[Tensor]) -> None:
        """Start every observer at the exact min/max over `batches`, then track by EMA."""
        momenta = [m.observer.momentum for m in self.layers]
        for m in self.layers:
            m.observer.momentum = None
        self.train()
        for x in batches:
            self(x)
        for m, momentum in zip(self.layers, momenta, strict=True):
            m.observer.momentum = momentum


def _images(batch: object) -> tuple[Tensor, Tensor]:
    """(images, labels) of a loader batch, or a one-line error."""
    if not isinstance(batch, list | tuple) or len(batch) < 2:
        raise QuantizationError("the QAT train loader must yield (images, labels) batches")
    return batch[0], batch[1]


def _calibration_batches(
    calibration: Tensor | DataLoader | None, train_loader: Iterable
) -> Iterable[Tensor]:
    """The images that start the observers, as float batches: all of `calibration` (chunks
    of 64 images of a tensor, every batch of a loader), else the first training batch."""
    if calibration is None:
        return [_images(next(iter(train_loader)))[0].float()]
    if isinstance(calibration, Tensor):
        return torch.split(calibration.float(), 64)
    return CalibrationBatches(calibration, len(calibration))


def qat_finetune(
    net: nn.Module,
    train_loader: Iterable,
    epochs: int = 3,
    lr: float = 1e-4,
    options: QuantOptions | None = None,
    weight_decay: float = 0.0,
    calibration_images: Tensor | DataLoader | None = None,
) -> PlainNet:
    """A new fp32 PlainNet fine-tuned (Adam, cross-entropy) through int8 fake quantization with
    `options.per_channel` weights; `net` is untouched. Observers start from
    `calibration_images` (a tensor, or a DataLoader read batch by batch; else the first
    training batch)."""
    options = options or QuantOptions()
    if not isinstance(epochs, int) or epochs < 1 or not lr > 0:
        raise QuantizationError(f"QAT needs epochs >= 1 and lr > 0, got {epochs}, {lr}")
    plain = copy.deepcopy(as_plain(net)).float()
    model = FakeQuantNet(plain, options.per_channel)
    model.calibrate(_calibration_batches(calibration_images, train_loader))
    opt = torch.optim.Adam(plain.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for epoch in range(epochs):
        total, count = 0.0, 0
        for batch in train_loader:
            x, y = _images(batch)
            loss = F.cross_entropy(model(x.float()), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * len(y), count + len(y)
        log.info("QAT epoch %d/%d: train loss %.4f", epoch + 1, epochs, total / max(count, 1))
    return plain.eval()


def export_qat(
    net: nn.Module,
    int8_path: str | Path,
    calibration_images: Tensor,
    options: QuantOptions | None = None,
) -> Path:
    """The QDQ int8 ONNX model of a QAT-fine-tuned net (ONNX Runtime's quantizer calibrated on
    the fine-tuned net's activations, same scheme as during fine-tuning)."""
    return quantize_net(net, int8_path, calibration_images, options)
