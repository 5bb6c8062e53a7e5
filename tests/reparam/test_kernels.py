"""Kernel algebra: centred padding, identity kernels for any grouping, branch sums."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from repvgg_lab.reparam import identity_kernel, merge, pad_to

SETTINGS = settings(max_examples=25, deadline=None)
GROUPINGS = st.sampled_from([1, 2, 4, "depthwise"])


def _groups_and_channels(groups: int | str, per_group: int) -> tuple[int, int]:
    return (4 * per_group, 4 * per_group) if groups == "depthwise" else (groups, groups * per_group)


@SETTINGS
@given(
    small=st.sampled_from([1, 3]),
    grow=st.sampled_from([2, 4]),
    stride=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_padded_kernel_computes_the_same_conv(small, grow, stride, seed):
    gen = torch.Generator().manual_seed(seed)
    kernel = torch.randn(3, 2, small, small, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 2, 9, 9, generator=gen, dtype=torch.float64)
    big = small + grow
    padded = pad_to(kernel, big)
    assert padded.shape == (3, 2, big, big)
    # The original taps sit in the centre, everything else is zero.
    p = grow // 2
    assert torch.equal(padded[:, :, p : p + small, p : p + small], kernel)
    assert float(padded.abs().sum()) == pytest.approx(float(kernel.abs().sum()))
    expected = F.conv2d(x, kernel, stride=stride, padding=small // 2)
    got = F.conv2d(x, padded, stride=stride, padding=big // 2)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_pad_to_same_size_is_unchanged() -> None:
    kernel = torch.randn(2, 2, 3, 3)
    assert torch.equal(pad_to(kernel, 3), kernel)


@pytest.mark.parametrize(
    ("shape", "size"), [((2, 2, 1, 1), 4), ((2, 2, 3, 1), 3), ((1, 1, 3, 3), 2)]
)
def test_pad_to_rejects_kernels_it_cannot_centre(shape, size) -> None:
    with pytest.raises(ValueError, match="cannot centre"):
        pad_to(torch.zeros(shape), size)


@SETTINGS
@given(
    groups=GROUPINGS,
    per_group=st.integers(1, 4),
    size=st.sampled_from([1, 3, 5]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_identity_kernel_is_the_identity_conv(groups, per_group, size, dtype, seed):
    groups, channels = _groups_and_channels(groups, per_group)
    kernel = identity_kernel(channels, groups, size, dtype=dtype)
    assert kernel.shape == (channels, channels // groups, size, size) and kernel.dtype == dtype
    x = torch.randn(2, channels, 6, 6, generator=torch.Generator().manual_seed(seed)).to(dtype)
    # One unit tap per output channel: the conv copies its input exactly, in any dtype.
    assert torch.equal(F.conv2d(x, kernel, padding=size // 2, groups=groups), x)
    assert int((kernel != 0).sum()) == channels


def test_identity_kernel_follows_device_argument() -> None:
    kernel = identity_kernel(4, 2, device="cpu")
    assert kernel.device.type == "cpu" and kernel.dtype == torch.float64


def test_identity_kernel_rejects_indivisible_channels() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        identity_kernel(6, 4)


@SETTINGS
@given(n_branches=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_merge_is_the_sum_of_parallel_convs(n_branches, seed):
    gen = torch.Generator().manual_seed(seed)
    pairs = [
        (
            torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64),
            torch.randn(4, generator=gen, dtype=torch.float64),
        )
        for _ in range(n_branches)
    ]
    x = torch.randn(2, 4, 5, 5, generator=gen, dtype=torch.float64)
    kernel, bias = merge(*pairs)
    expected = sum(F.conv2d(x, k, b, padding=1, groups=2) for k, b in pairs)
    torch.testing.assert_close(F.conv2d(x, kernel, bias, padding=1, groups=2), expected)


def test_merge_does_not_modify_its_inputs() -> None:
    a = (torch.ones(1, 1, 3, 3), torch.ones(1))
    b = (torch.full((1, 1, 3, 3), 2.0), torch.full((1,), 2.0))
    kernel, bias = merge(a, b)
    assert torch.equal(kernel, torch.full((1, 1, 3, 3), 3.0)) and torch.equal(
        bias, torch.tensor([3.0])
    )
    assert torch.equal(a[0], torch.ones(1, 1, 3, 3)) and torch.equal(a[1], torch.ones(1))


def test_merge_needs_a_pair() -> None:
    with pytest.raises(ValueError, match="at least one"):
        merge()
