"""Helpers for the reparam tests: random BN statistics and BN evaluated the way torch does it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from repvgg_lab.reparam import BNStats

# BN regimes the property tests draw from: trained-like statistics, a wide one with negative
# gammas and variances over six decades, and the small-gamma init the gamma-drift study sweeps.
BN_REGIMES = ("trained", "wide", "small_gamma")


def _random_stats(
    channels: int, seed: int, regime: str = "trained", dtype: torch.dtype = torch.float64
) -> BNStats:
    gen = torch.Generator().manual_seed(seed)

    def randn() -> Tensor:
        return torch.randn(channels, generator=gen, dtype=torch.float64)

    def rand() -> Tensor:
        return torch.rand(channels, generator=gen, dtype=torch.float64)

    if regime == "trained":
        mean, var = randn() * 0.1, rand() * 1.5 + 0.5
        weight, bias = rand() + 0.5, randn() * 0.1
    elif regime == "wide":
        mean, var = randn() * 3, torch.pow(10.0, rand() * 6 - 3)
        weight, bias = randn() * 2, randn()
    elif regime == "small_gamma":
        mean, var = torch.zeros(channels, dtype=torch.float64), torch.ones(channels)
        weight, bias = torch.full((channels,), 0.01), torch.zeros(channels)
    else:
        raise ValueError(regime)
    eps = (1e-5, 1e-3)[seed % 2]
    return BNStats(*(t.to(dtype) for t in (mean, var, weight, bias)), eps)


def _bn_eval(x: Tensor, stats: BNStats) -> Tensor:
    """Eval-mode batch norm in float64 through torch's own kernel (the independent truth)."""
    s = [t.to(torch.float64) for t in (stats.mean, stats.var, stats.weight, stats.bias)]
    return F.batch_norm(x.to(torch.float64), s[0], s[1], s[2], s[3], False, 0.0, stats.eps)


@pytest.fixture(scope="session")
def random_stats() -> Callable[..., BNStats]:
    """random_stats(channels, seed, regime="trained", dtype=float64) -> BNStats."""
    return _random_stats


@pytest.fixture(scope="session")
def bn_eval() -> Callable[[Tensor, BNStats], Tensor]:
    """bn_eval(x, stats): eval-mode BN of x in float64."""
    return _bn_eval
