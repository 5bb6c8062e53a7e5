"""Trained-like nets for equivalence checks, studies and benchmarks (not for training).

A freshly built net has identity BN, which hides fusion mistakes; `trained_like` gives every BN
statistics and affine terms of the size training produces, from one seed, the same way wherever
a test, a study or a benchmark needs such a net."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from repvgg_lab.models.registry import create_model


def _batchnorms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def trained_like(
    name: str, seed: int = 0, inputs: torch.Tensor | None = None, **kwargs: Any
) -> nn.Module:
    """`create_model(name, **kwargs)` with weights drawn under `seed` and `randomize_bn`
    statistics (calibrated on `inputs` when given), in eval mode."""
    torch.manual_seed(seed)
    return randomize_bn(create_model(name, **kwargs), seed=seed, inputs=inputs).eval()


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
