"""Int8 simulation in PyTorch with ONNX Runtime's QDQ scheme: symmetric int8 weights (per output
channel or per tensor), asymmetric uint8 activations whose range always contains zero.

Used by the per-layer diagnostics (what int8 does to one layer) and by QAT (the same rounding in
the forward pass, straight-through gradients in the backward pass)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# ONNX Runtime's symmetric int8 weights use [-127, 127]: scale = max|w| / 127.
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
ACT_QMIN, ACT_QMAX = 0, 255
_TINY = 1e-12


def weight_scales(weight: Tensor, per_channel: bool) -> Tensor:
    """Symmetric int8 scale of `weight`: one per output channel, or a 1-element tensor."""
    w = weight.detach().float()
    amax = w.flatten(1).abs().amax(dim=1) if per_channel else w.abs().max().reshape(1)
    return (amax * 2.0 / (WEIGHT_QMAX - WEIGHT_QMIN)).clamp_min(_TINY)


def fake_quant_weight(weight: Tensor, per_channel: bool) -> Tensor:
    """`weight` rounded to its int8 grid (straight-through gradient)."""
    scale = weight_scales(weight, per_channel)
    w = weight.float()
    if per_channel:
        zero = torch.zeros(scale.numel(), dtype=torch.int32, device=w.device)
        out = torch.fake_quantize_per_channel_affine(w, scale, zero, 0, WEIGHT_QMIN, WEIGHT_QMAX)
    else:
        zero = torch.zeros(1, dtype=torch.int32, device=w.device)
        out = torch.fake_quantize_per_tensor_affine(w, scale, zero, WEIGHT_QMIN, WEIGHT_QMAX)
    return out.to(weight.dtype)


def act_qparams(low: float, high: float) -> tuple[float, int]:
    """uint8 scale and zero point of the range [low, high] widened to contain zero."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = max((high - low) / (ACT_QMAX - ACT_QMIN), _TINY)
    zero = int(min(max(round(ACT_QMIN - low / scale), ACT_QMIN), ACT_QMAX))
    return scale, zero


def fake_quant_act(x: Tensor, low: float, high: float) -> Tensor:
    """`x` rounded to the uint8 grid of [low, high] (straight-through gradient inside it)."""
    scale, zero = act_qparams(low, high)
    return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero, ACT_QMIN, ACT_QMAX).to(
        x.dtype
    )


def noise_and_signal(reference: Tensor, quantized: Tensor) -> tuple[Tensor, Tensor]:
    """Per channel (dim 1), Σ(ref − q)² and Σref² in float64: sums that add up over batches."""
    ref = reference.detach().double().transpose(0, 1).flatten(1)
    noise = (quantized.detach().double().transpose(0, 1).flatten(1) - ref).pow(2).sum(dim=1)
    return noise, ref.pow(2).sum(dim=1)


def sqnr_db(noise: Tensor, signal: Tensor) -> float:
    """Signal-to-quantization-noise ratio 10·log10(Σref² / Σ(ref − q)²) in dB over the whole
    tensor, from `noise_and_signal`'s per-channel sums (inf if exact)."""
    total_noise, total_signal = float(noise.sum()), float(signal.sum())
    if total_noise == 0.0:
        return math.inf
    if total_signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(total_signal / total_noise)


def channel_sqnr_db(noise: Tensor, signal: Tensor) -> float:
    """SQNR with every channel weighted alike: -10·log10 of the mean over channels of
    noise_c / signal_c (channels that are exactly zero in fp32 and int8 are left out), so a few
    large channels cannot hide the damage done to all the others; from per-channel sums."""
    live = (signal > 0) | (noise > 0)
    if not bool(live.any()) or float(noise[live].sum()) == 0.0:
        return math.inf
    ratio = noise[live] / signal[live]
    if bool(torch.isinf(ratio).any()):
        return -math.inf
    return -10.0 * math.log10(float(ratio.mean()))


class RangeObserver(nn.Module):
    """Running min/max of what passes through (exact min/max until `momentum` is set, then an
    exponential average); `frozen` stops updates."""

    def __init__(self, momentum: float | None = None) -> None:
        """An empty range (low = inf, high = -inf) that the first observation replaces."""
        super().__init__()
        self.momentum = momentum
        self.frozen = False
        self.register_buffer("low", torch.tensor(math.inf))
        self.register_buffer("high", torch.tensor(-math.inf))

    def observe(self, x: Tensor) -> None:
        """Fold the range of `x` into the running range."""
        if self.frozen:
            return
        low, high = x.detach().min().float(), x.detach().max().float()
        if self.momentum is None or not torch.isfinite(self.low):
            self.low.copy_(torch.minimum(self.low, low))
            self.high.copy_(torch.maximum(self.high, high))
        else:
            m = self.momentum
            self.low.copy_((1 - m) * self.low + m * low)
            self.high.copy_((1 - m) * self.high + m * high)

    def range(self) -> tuple[float, float]:
        """(low, high) seen so far."""
        return float(self.low), float(self.high)
