"""Batch-norm statistics as plain tensors, and conv+BN fusion in float64."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

FUSE_DTYPE = torch.float64


class BNStats(NamedTuple):
    """Eval-mode BN parameters: y = (x - mean) / sqrt(var + eps) * weight + bias."""

    mean: Tensor
    var: Tensor
    weight: Tensor
    bias: Tensor
    eps: float

    @classmethod
    def of(cls, bn: nn.modules.batchnorm._BatchNorm) -> BNStats:
        """Read running statistics (never batch statistics), whatever the module's mode."""
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(
                f"{type(bn).__name__} has no running statistics (track_running_stats=False); "
                "it cannot be folded into a convolution"
            )
        ones = torch.ones_like(bn.running_mean)
        weight = bn.weight if bn.weight is not None else ones
        bias = bn.bias if bn.bias is not None else torch.zeros_like(ones)
        return cls(bn.running_mean, bn.running_var, weight, bias, float(bn.eps))

    def select(self, index: slice | Tensor) -> BNStats:
        """Statistics of a subset of channels."""
        return BNStats(
            self.mean[index], self.var[index], self.weight[index], self.bias[index], self.eps
        )

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """Per-channel (scale, shift) in float64 such that BN(x) = x * scale + shift."""
        scale = self.weight.to(FUSE_DTYPE) / torch.sqrt(self.var.to(FUSE_DTYPE) + self.eps)
        shift = self.bias.to(FUSE_DTYPE) - self.mean.to(FUSE_DTYPE) * scale
        return scale, shift


def fuse_conv_bn(
    kernel: Tensor, stats: BNStats, conv_bias: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Fold eval-mode BN into the preceding conv; returns float64 (kernel, bias), unrounded."""
    scale, shift = stats.scale_shift()
    fused = kernel.to(FUSE_DTYPE) * scale.reshape(-1, *([1] * (kernel.dim() - 1)))
    if conv_bias is not None:
        shift = shift + conv_bias.to(FUSE_DTYPE) * scale
    return fused, shift
