"""Init schemes applied to every branch BN (the `init` config group)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def _batchnorms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def default(model: nn.Module) -> nn.Module:
    """PyTorch's own initialisation (what the official RepVGG code uses): BN gamma 1, beta 0."""
    return model


def bn_gamma(model: nn.Module, gamma: float = 1.0, beta: float = 0.0) -> nn.Module:
    """Every BN weight set to `gamma` and bias to `beta` (the knob of the gamma-drift study)."""
    with torch.no_grad():
        for bn in _batchnorms(model):
            if bn.weight is not None:
                bn.weight.fill_(gamma)
                bn.bias.fill_(beta)
    return model


def timm_like(model: nn.Module, seed: int | None = None) -> nn.Module:
    """timm-style init: kaiming-normal (fan_out) convs, BN gamma ~ N(.1, .1), beta ~ N(0, .1)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_out) ** 0.5)
            elif isinstance(m, _BatchNorm) and m.weight is not None:
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.1 + 0.1)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model
