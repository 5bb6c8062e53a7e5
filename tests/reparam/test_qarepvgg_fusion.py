"""QARepVGG fusion: the single conv equals BN(BN3(conv_kxk(x)) + conv_1x1(x) + x) for every
grouping, stride, dtype and BN regime, it is the float64 result rounded once, and a gate folds
in."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

import repvgg_lab.reparam.fuse as repvgg_math
from repvgg_lab.reparam import BNStats, qarepvgg_kernel_bias, rel_max, repvgg_kernel_bias, tolerance

from .test_repvgg_fusion import DTYPES, _as64, _fused, blocks


def _make(block, random_stats, dtype, gated=False):
    """(k3, bn3, k1, bn, gate) rounded to `dtype`; the gate has exact zeros among its values."""
    gen = torch.Generator().manual_seed(block["seed"])
    cout, per_group, size = block["cout"], block["cin"] // block["groups"], block["size"]
    k3 = torch.randn(cout, per_group, size, size, generator=gen).to(dtype)
    k1 = torch.randn(cout, per_group, 1, 1, generator=gen).to(dtype) if block["with_1x1"] else None
    bn3, bn = (random_stats(cout, block["seed"] + i, block["regimes"][i], dtype) for i in (0, 1))
    gate = None
    if gated:
        gate = (torch.rand(cout, generator=gen) * 2 - 1).to(dtype)
        gate[torch.rand(cout, generator=gen) < 0.3] = 0.0
    return k3, bn3, k1, bn, gate


def _branches(x, block, k3, bn3, k1, bn, gate, bn_eval):
    """gate * BN(BN3(conv_kxk(x)) + conv_1x1(x) + x), branch by branch in float64 (the truth)."""
    x = x.double()
    s, g = block["stride"], block["groups"]
    y = bn_eval(F.conv2d(x, k3.double(), stride=s, padding=k3.shape[-1] // 2, groups=g), bn3)
    if k1 is not None:
        y = y + F.conv2d(x, k1.double(), stride=s, groups=g)
    if block["with_identity"]:
        y = y + x
    y = bn_eval(y, bn)
    return y if gate is None else y * gate.double().view(1, -1, 1, 1)


def _fuse(k3, bn3, k1, bn, gate, block, **kw):
    return qarepvgg_kernel_bias(k3, bn3, k1, bn, identity=block["with_identity"], scale=gate, **kw)


@settings(max_examples=60, deadline=None)
@given(block=blocks(), gated=st.booleans())
def test_fused_conv_equals_the_qa_branches_in_float64(random_stats, bn_eval, block, gated):
    k3, bn3, k1, bn, gate = _make(block, random_stats, torch.float64, gated)
    kernel, bias = _fuse(k3, bn3, k1, bn, gate, block)
    assert kernel.shape == k3.shape and bias.shape == (block["cout"],)
    x = torch.randn(2, block["cin"], 8, 8, dtype=torch.float64)
    truth = _branches(x, block, k3, bn3, k1, bn, gate, bn_eval)
    assert rel_max(truth, _fused(x, block, kernel, bias)) <= 1e-12
    if gate is not None:  # a zero gate is an exactly zero filter *and* bias: a dead channel
        off = gate == 0
        assert bool((kernel[off] == 0).all()) and bool((bias[off] == 0).all())


@settings(max_examples=40, deadline=None)
@given(block=blocks(), dtype=st.sampled_from(DTYPES))
def test_qa_fusion_rounds_the_float64_result_once(random_stats, bn_eval, block, dtype):
    k3, bn3, k1, bn, _ = _make(block, random_stats, dtype)
    kernel, bias = _fuse(k3, bn3, k1, bn, None, block)
    assert kernel.dtype == bias.dtype == dtype
    exact_k, exact_b = _fuse(
        k3.double(), _as64(bn3), None if k1 is None else k1.double(), _as64(bn), None, block
    )
    assert exact_k.dtype == torch.float64
    assert torch.equal(kernel, exact_k.to(dtype)) and torch.equal(bias, exact_b.to(dtype))
    x = torch.randn(2, block["cin"], 8, 8).to(dtype)
    truth = _branches(x, block, k3, bn3, k1, bn, None, bn_eval)
    assert rel_max(truth, _fused(x, block, kernel, bias)) <= tolerance(dtype)


@settings(max_examples=30, deadline=None)
@given(block=blocks())
def test_a_neutral_bn_makes_qa_the_repvgg_fusion_with_neutral_branch_bns(random_stats, block):
    """BN with scale 1 and shift 0 on the sum, the 1x1 and the identity: both fusions agree
    bitwise, so QA reuses RepVGG's arithmetic rather than a second copy of it."""
    k3, bn3, k1, _, _ = _make(block, random_stats, torch.float32)
    zeros, ones = torch.zeros(block["cout"]), torch.ones(block["cout"])
    neutral = BNStats(mean=zeros, var=ones, weight=ones, bias=zeros, eps=0.0)
    qa = _fuse(k3, bn3, k1, neutral, None, block)
    bn1 = neutral if k1 is not None else None
    rep = repvgg_kernel_bias(k3, bn3, k1, bn1, neutral if block["with_identity"] else None)
    assert torch.equal(qa[0], rep[0]) and torch.equal(qa[1], rep[1])


def test_out_and_chunking_give_the_one_pass_result(random_stats, monkeypatch) -> None:
    k3, k1 = torch.randn(40, 5, 3, 3), torch.randn(40, 5, 1, 1)
    bn3, bn = (random_stats(40, s, "wide", torch.float32) for s in range(2))
    one_pass = qarepvgg_kernel_bias(k3, bn3, k1, bn, identity=False)
    out = (torch.empty(40, 5, 3, 3), torch.empty(40))
    monkeypatch.setattr(repvgg_math, "_CHUNK_ELEMENTS", 7 * 5 * 9)  # 7 rows per chunk
    result = qarepvgg_kernel_bias(k3, bn3, k1, bn, identity=False, out=out)
    assert result[0] is out[0] and result[1] is out[1]
    assert torch.equal(out[0], one_pass[0]) and torch.equal(out[1], one_pass[1])


def test_qa_fusion_is_differentiable() -> None:
    """gradcheck through both kernels, both BNs and the gate."""
    gen = torch.Generator().manual_seed(0)

    def leaf(*shape, low=0.0):
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) + low).requires_grad_()

    k3, k1, gate = leaf(4, 4, 3, 3), leaf(4, 4, 1, 1), leaf(4)
    stats = [(leaf(4), leaf(4, low=0.5), leaf(4, low=0.5), leaf(4)) for _ in range(2)]

    def fused(k3, k1, gate, *flat):
        bn3, bn = (BNStats(*flat[4 * i : 4 * i + 4], 1e-5) for i in range(2))
        return qarepvgg_kernel_bias(k3, bn3, k1, bn, identity=True, scale=gate)

    assert torch.autograd.gradcheck(fused, (k3, k1, gate, *(t for s in stats for t in s)))


def test_rejects_mismatched_shapes(random_stats) -> None:
    k3, stats = torch.zeros(4, 2, 3, 3), random_stats(4, 0)
    with pytest.raises(ValueError, match="does not match"):
        qarepvgg_kernel_bias(k3, stats, torch.zeros(4, 4, 1, 1), stats, identity=False)
    with pytest.raises(ValueError, match="does not match"):
        qarepvgg_kernel_bias(k3, stats, None, stats, identity=False, scale=torch.ones(3))
    with pytest.raises(ValueError, match="odd square kernel"):
        qarepvgg_kernel_bias(torch.zeros(4, 2, 2, 2), stats, None, stats, identity=False)
