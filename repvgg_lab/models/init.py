"""Init schemes (applied to every branch BN) and synthetic BN statistics for equivalence tests."""

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


def randomize_bn(model: nn.Module, seed: int = 0, inputs: torch.Tensor | None = None) -> nn.Module:
    """Trained-like BN: mean ~ N(0, .1^2), var ~ U(.5, 2), gamma ~ U(.5, 1.5), beta ~ N(0, .1^2).

    Makes equivalence checks meaningful (fresh BN is the identity and hides fusion mistakes).
    With `inputs`, the running statistics are then calibrated on them (`calibrate_bn`), so deep
    nets keep well-scaled activations, as trained ones do."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in _batchnorms(model):
            shape = bn.running_mean.shape
            bn.running_mean.copy_(torch.randn(shape, generator=gen) * 0.1)
            bn.running_var.copy_(torch.rand(shape, generator=gen) * 1.5 + 0.5)
            if bn.weight is not None:
                bn.weight.copy_(torch.rand(shape, generator=gen) + 0.5)
                bn.bias.copy_(torch.randn(shape, generator=gen) * 0.1)
    return calibrate_bn(model, inputs) if inputs is not None else model


def calibrate_bn(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """Set every BN's running statistics to the exact statistics of `inputs` (one forward pass
    in train mode with a cumulative average); gamma/beta and all other state are kept."""
    bns = _batchnorms(model)
    saved = [(bn, bn.momentum) for bn in bns]
    flags = [(m, m.training) for m in model.modules()]
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: after one batch, exactly its statistics
        model.train()
        with torch.no_grad():
            model(inputs)
    finally:
        for bn, momentum in saved:
            bn.momentum = momentum
        for m, flag in flags:
            m.training = flag
    return model
