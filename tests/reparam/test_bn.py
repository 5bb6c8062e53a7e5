"""BN statistics as tensors and conv+BN fusion: equal to conv followed by torch's own BN."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from repvgg_lab.reparam import FUSE_DTYPE, BNStats, fuse_conv_bn, rel_max

from .conftest import BN_REGIMES

SETTINGS = settings(max_examples=25, deadline=None)


def _bn_with_stats(channels: int, seed: int, **kwargs) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=gen))
        bn.running_var.copy_(torch.rand(channels, generator=gen) + 0.5)
        if bn.weight is not None:
            bn.weight.copy_(torch.randn(channels, generator=gen))
            bn.bias.copy_(torch.randn(channels, generator=gen))
    return bn


def test_of_reads_running_stats_even_in_train_mode() -> None:
    bn = _bn_with_stats(6, seed=1).train()
    stats = BNStats.of(bn)
    x = torch.randn(4, 6, 5, 5) * 3 + 2  # batch statistics far from the running ones
    with torch.no_grad():
        scale, shift = stats.scale_shift()
        fused = x.double() * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        expected = bn.eval()(x)
        batch_stats = bn.train()(x)
    assert rel_max(expected, fused) < 1e-6
    assert rel_max(batch_stats, fused) > 1e-2  # batch statistics would give another answer


def test_of_without_affine_parameters_is_pure_normalisation() -> None:
    bn = _bn_with_stats(5, seed=2, affine=False).eval()
    stats = BNStats.of(bn)
    assert torch.equal(stats.weight, torch.ones(5)) and torch.equal(stats.bias, torch.zeros(5))
    x = torch.randn(2, 5, 3, 3)
    scale, shift = stats.scale_shift()
    with torch.no_grad():
        expected = bn(x)
    assert rel_max(expected, x.double() * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)) < 1e-6


def test_of_rejects_bn_without_running_stats() -> None:
    with pytest.raises(ValueError, match="track_running_stats"):
        BNStats.of(nn.BatchNorm2d(4, track_running_stats=False))


@SETTINGS
@given(
    channels=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    regime=st.sampled_from(BN_REGIMES),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_scale_shift_is_eval_bn_in_float64(random_stats, bn_eval, channels, seed, regime, dtype):
    stats = random_stats(channels, seed, regime, dtype)
    scale, shift = stats.scale_shift()
    assert scale.dtype == shift.dtype == FUSE_DTYPE
    x = torch.randn(3, channels, 2, 2, dtype=torch.float64)
    expected = bn_eval(x, stats)
    got = x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    assert rel_max(expected, got) < 1e-12


def test_select_keeps_the_chosen_channels(random_stats) -> None:
    stats = random_stats(8, seed=3)
    index = torch.tensor([6, 1, 3])
    for sub, idx in ((stats.select(index), index), (stats.select(slice(2, 5)), slice(2, 5))):
        for field in ("mean", "var", "weight", "bias"):
            assert torch.equal(getattr(sub, field), getattr(stats, field)[idx])
        assert sub.eps == stats.eps


@SETTINGS
@given(
    groups=st.sampled_from([1, 2, 4, "depthwise"]),
    in_per_group=st.integers(1, 3),
    out_per_group=st.integers(1, 3),
    kernel_size=st.sampled_from([1, 3, 5]),
    stride=st.sampled_from([1, 2]),
    conv_bias=st.booleans(),
    regime=st.sampled_from(BN_REGIMES),
    seed=st.integers(0, 2**16),
)
def test_fused_conv_equals_conv_then_bn(
    random_stats,
    bn_eval,
    groups,
    in_per_group,
    out_per_group,
    kernel_size,
    stride,
    conv_bias,
    regime,
    seed,
):
    if groups == "depthwise":
        groups, in_per_group = 4, 1
    cin, cout = groups * in_per_group, groups * out_per_group
    gen = torch.Generator().manual_seed(seed)
    kernel = torch.randn(cout, in_per_group, kernel_size, kernel_size, generator=gen)
    bias = torch.randn(cout, generator=gen) if conv_bias else None
    stats = random_stats(cout, seed, regime, torch.float32)
    x = torch.randn(2, cin, 7, 7, generator=gen, dtype=torch.float64)
    pad = kernel_size // 2

    def conv(k, b):
        b = None if b is None else b.double()
        return F.conv2d(x, k.double(), b, stride=stride, padding=pad, groups=groups)

    fused_k, fused_b = fuse_conv_bn(kernel, stats, bias)
    # Unrounded: the fp32 inputs are promoted, the result stays float64.
    assert fused_k.dtype == fused_b.dtype == FUSE_DTYPE
    assert fused_k.shape == kernel.shape and fused_b.shape == (cout,)
    assert rel_max(bn_eval(conv(kernel, bias), stats), conv(fused_k, fused_b)) < 1e-12
