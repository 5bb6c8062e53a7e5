"""RepVGG fusion: the single conv equals the three branches, for every grouping, stride and dtype,
and it is the float64 result rounded once."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

import repvgg_lab.reparam.fuse as repvgg_math
from repvgg_lab.reparam import BNStats, rel_max, repvgg_kernel_bias, tolerance

from .conftest import BN_REGIMES

DTYPES = [torch.float32, torch.bfloat16, torch.float64]


@st.composite
def blocks(draw):
    """A random RepVGG block: shapes, which branches exist, and a BN regime per branch."""
    groups = draw(st.sampled_from([1, 2, 4, "depthwise"]))
    stride = draw(st.sampled_from([1, 2]))
    if groups == "depthwise":
        in_per_group, groups = 1, draw(st.integers(2, 8))
    else:
        in_per_group = draw(st.integers(1, 4))
    cin = groups * in_per_group
    # Half the draws keep in == out so the identity branch can exist.
    cout = cin if draw(st.booleans()) else groups * draw(st.integers(1, 4))
    return {
        "cin": cin,
        "cout": cout,
        "groups": groups,
        "stride": stride,
        "size": draw(st.sampled_from([3, 3, 5])),
        "with_1x1": draw(st.booleans()) or cin != cout,
        "with_identity": cin == cout and stride == 1 and draw(st.booleans()),
        "regimes": [draw(st.sampled_from(BN_REGIMES)) for _ in range(3)],
        "seed": draw(st.integers(0, 2**16)),
    }


def _make(block, random_stats, dtype):
    """Branch tensors rounded to `dtype` (the model as stored)."""
    gen = torch.Generator().manual_seed(block["seed"])
    cout, per_group, size = block["cout"], block["cin"] // block["groups"], block["size"]
    k3 = torch.randn(cout, per_group, size, size, generator=gen).to(dtype)
    k1 = torch.randn(cout, per_group, 1, 1, generator=gen).to(dtype) if block["with_1x1"] else None
    bn3, bn1, bn_id = (
        random_stats(cout, block["seed"] + i, regime, dtype)
        for i, regime in enumerate(block["regimes"])
    )
    return k3, bn3, k1, bn1 if k1 is not None else None, bn_id if block["with_identity"] else None


def _branches(x, block, k3, bn3, k1, bn1, bn_id, bn_eval):
    """BN(conv_kxk(x)) + BN(conv_1x1(x)) + BN(x), branch by branch in float64 (the truth)."""
    x = x.double()
    s, g = block["stride"], block["groups"]
    y = bn_eval(F.conv2d(x, k3.double(), stride=s, padding=k3.shape[-1] // 2, groups=g), bn3)
    if k1 is not None:
        y = y + bn_eval(F.conv2d(x, k1.double(), stride=s, groups=g), bn1)
    if bn_id is not None:
        y = y + bn_eval(x, bn_id)
    return y


def _fused(x, block, kernel, bias):
    return F.conv2d(
        x,
        kernel,
        bias,
        stride=block["stride"],
        padding=kernel.shape[-1] // 2,
        groups=block["groups"],
    )


def _as64(stats: BNStats | None) -> BNStats | None:
    return None if stats is None else BNStats(*(t.double() for t in stats[:4]), stats.eps)


@settings(max_examples=60, deadline=None)
@given(block=blocks())
def test_fused_conv_equals_the_three_branches_in_float64(random_stats, bn_eval, block):
    k3, bn3, k1, bn1, bn_id = _make(block, random_stats, torch.float64)
    kernel, bias = repvgg_kernel_bias(k3, bn3, k1, bn1, bn_id)
    assert kernel.shape == k3.shape and bias.shape == (block["cout"],)
    x = torch.randn(2, block["cin"], 8, 8, dtype=torch.float64)
    truth = _branches(x, block, k3, bn3, k1, bn1, bn_id, bn_eval)
    assert rel_max(truth, _fused(x, block, kernel, bias)) < 1e-12


@settings(max_examples=40, deadline=None)
@given(block=blocks(), dtype=st.sampled_from(DTYPES))
def test_fusion_rounds_the_float64_result_once(random_stats, bn_eval, block, dtype):
    k3, bn3, k1, bn1, bn_id = _make(block, random_stats, dtype)
    kernel, bias = repvgg_kernel_bias(k3, bn3, k1, bn1, bn_id)
    assert kernel.dtype == bias.dtype == dtype
    exact_k, exact_b = repvgg_kernel_bias(
        k3.double(), _as64(bn3), None if k1 is None else k1.double(), _as64(bn1), _as64(bn_id)
    )
    assert exact_k.dtype == torch.float64
    # Bitwise: the low-precision result is the float64 fusion rounded once, nothing else.
    assert torch.equal(kernel, exact_k.to(dtype)) and torch.equal(bias, exact_b.to(dtype))
    # And the rounded conv, evaluated in `dtype`, stays within that dtype's tolerance of the truth.
    x = torch.randn(2, block["cin"], 8, 8).to(dtype)
    truth = _branches(x, block, k3, bn3, k1, bn1, bn_id, bn_eval)
    assert rel_max(truth, _fused(x, block, kernel, bias)) <= tolerance(dtype)


def test_dtype_argument_overrides_the_kernel_dtype(random_stats) -> None:
    k3 = torch.randn(4, 4, 3, 3)
    kernel, bias = repvgg_kernel_bias(k3, random_stats(4, 0), dtype=torch.float64)
    assert kernel.dtype == bias.dtype == torch.float64
    rounded, _ = repvgg_kernel_bias(k3, random_stats(4, 0))
    assert rounded.dtype == torch.float32 and torch.equal(rounded, kernel.float())


def test_out_receives_the_result_in_place(random_stats) -> None:
    k3, k1 = torch.randn(6, 3, 3, 3), torch.randn(6, 3, 1, 1)
    bn3, bn1, bn_id = (random_stats(6, s, "wide", torch.float32) for s in range(3))
    expected = repvgg_kernel_bias(k3, bn3, k1, bn1, bn_id)
    out = (torch.empty(6, 3, 3, 3), torch.empty(6))
    result = repvgg_kernel_bias(k3, bn3, k1, bn1, bn_id, out=out)
    assert result[0] is out[0] and result[1] is out[1]
    assert torch.equal(out[0], expected[0]) and torch.equal(out[1], expected[1])


def test_chunked_fusion_matches_one_pass(random_stats, monkeypatch) -> None:
    # Wide layers are fused a few output channels at a time; chunk borders must not show.
    k3, k1 = torch.randn(40, 5, 3, 3), torch.randn(40, 5, 1, 1)
    stats = [random_stats(40, s, "wide", torch.float32) for s in range(3)]
    one_pass = repvgg_kernel_bias(k3, stats[0], k1, stats[1], stats[2])
    monkeypatch.setattr(repvgg_math, "_CHUNK_ELEMENTS", 7 * 5 * 9)  # 7 rows per chunk
    chunked = repvgg_kernel_bias(k3, stats[0], k1, stats[1], stats[2])
    assert torch.equal(chunked[0], one_pass[0]) and torch.equal(chunked[1], one_pass[1])


def test_fusion_is_differentiable() -> None:
    """gradcheck against finite differences, through kernels and every BN parameter."""
    gen = torch.Generator().manual_seed(0)

    def leaf(*shape, low=0.0):
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) + low).requires_grad_()

    k3, k1 = leaf(4, 2, 3, 3), leaf(4, 2, 1, 1)
    stats = [(leaf(4), leaf(4, low=0.5), leaf(4, low=0.5), leaf(4)) for _ in range(3)]

    def fused(k3, k1, *flat):
        bn3, bn1, bn_id = (BNStats(*flat[4 * i : 4 * i + 4], 1e-5) for i in range(3))
        return repvgg_kernel_bias(k3, bn3, k1, bn1, bn_id)

    inputs = (k3, k1, *(t for s in stats for t in s))
    assert torch.autograd.gradcheck(fused, inputs)


@pytest.mark.parametrize("size", [2, 4])
def test_rejects_even_kernels(random_stats, size) -> None:
    with pytest.raises(ValueError, match="odd square kernel"):
        repvgg_kernel_bias(torch.zeros(4, 4, size, size), random_stats(4, 0))


def test_rejects_mismatched_1x1_branch(random_stats) -> None:
    k3, stats = torch.zeros(4, 2, 3, 3), random_stats(4, 0)
    with pytest.raises(ValueError, match="does not match"):
        repvgg_kernel_bias(k3, stats, torch.zeros(4, 4, 1, 1), stats)
    with pytest.raises(ValueError, match="does not match"):
        repvgg_kernel_bias(k3, stats, torch.zeros(4, 2, 1, 1), None)
