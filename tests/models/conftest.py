"""Helpers for the model tests: trained-like small nets and their float64 evaluation."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from repvgg_lab.testing import trained_like


def _trained(name: str = "repvgg_a0", seed: int = 0, num_classes: int = 10, **kw) -> nn.Module:
    """A registry model with random conv weights and trained-like BN statistics, in eval mode."""
    return trained_like(name, seed, num_classes=num_classes, **kw)


@torch.no_grad()
def _truth(model: nn.Module, x: Tensor) -> Tensor:
    """The model evaluated in float64 (eval mode) on a float64 copy of x."""
    return copy.deepcopy(model).double().eval()(x.double())


@pytest.fixture(scope="session")
def trained() -> Callable[..., nn.Module]:
    """trained(name="repvgg_a0", seed=0, num_classes=10, **overrides) -> eval-mode model."""
    return _trained


@pytest.fixture(scope="session")
def truth() -> Callable[[nn.Module, Tensor], Tensor]:
    """truth(model, x): float64 evaluation of a copy of model."""
    return _truth
