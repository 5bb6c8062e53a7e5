"""Pruning math: keep sets, carrier folding (exact at borders), scalar folding (exact only
without padding), and the per-channel scale of the RepVGG fusion."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from repvgg_lab.reparam import BNStats, repvgg_kernel_bias
from repvgg_lab.reparam.prune import (
    carrier_kernels,
    constant_outputs,
    effective_norms,
    filter_norms,
    fold_into_bias,
    input_norms,
    legal_keep,
    prune_inputs,
    prune_outputs,
    ratio_threshold,
    select_channels,
)

F64 = torch.float64


def test_filter_norms_are_float64_l2_and_see_tiny_filters():
    w = torch.randn(5, 3, 3, 3)
    w[1] = 0
    w[2] = 1e-30  # squares underflow in float32: a float32 norm would call this filter zero
    norms = filter_norms(w)
    assert norms.dtype == F64
    assert norms[1] == 0 and norms[2] > 0
    torch.testing.assert_close(norms[0], w[0].double().pow(2).sum().sqrt())
    assert filter_norms(torch.randn(4, 7)).shape == (4,)


def test_constant_outputs_clamp_the_bias_per_channel():
    bias = torch.tensor([-1.0, 0.5, 7.0, -2.0])
    lower = torch.tensor([0.0, 0.0, 0.0, -math.inf], dtype=F64)
    upper = torch.tensor([math.inf, 6.0, 6.0, math.inf], dtype=F64)
    a = constant_outputs(bias, lower, upper)
    assert a.dtype == F64
    assert a.tolist() == [0.0, 0.5, 6.0, -2.0]


def test_threshold_removes_only_low_scores_and_never_empties_a_layer():
    scores = torch.tensor([0.0, 3.0, 0.0, 1.0, 0.5, 2.0])
    assert select_channels(scores, threshold=0.0).tolist() == [1, 3, 4, 5]
    assert select_channels(scores, threshold=0.75).tolist() == [1, 3, 5]
    # Everything is below an infinite threshold: the best channel (index 1) survives.
    assert select_channels(scores, threshold=math.inf).tolist() == [1]
    assert select_channels(scores, threshold=math.inf, min_keep=3).tolist() == [1, 3, 5]


def test_blocks_remove_the_same_number_everywhere():
    # Block 0 has two zero scores, block 1 only one: only one per block may go (the tie in
    # block 0 keeps the lower index).
    scores = torch.tensor([0.0, 0.0, 1.0, 2.0, 0.0, 3.0, 4.0, 5.0])
    keep = select_channels(scores, threshold=0.0, blocks=2)
    assert keep.tolist() == [0, 2, 3, 5, 6, 7]


def test_ratio_mode_and_rounding_to_a_multiple():
    scores = torch.arange(20, dtype=F64).flip(0)  # channel 19 scores lowest
    assert select_channels(scores, ratio=0.25).tolist() == list(range(15))
    # 15 kept rounded up to a multiple of 8 -> 16.
    assert select_channels(scores, ratio=0.25, multiple=8).numel() == 16
    assert select_channels(scores, ratio=1.0).tolist() == [0]
    assert select_channels(scores, ratio=0.0).numel() == 20
    # 0.29 * 100 is 28.999999999999996 in binary floating point: still 29 channels removed.
    assert select_channels(torch.rand(100), ratio=0.29).numel() == 71
    with pytest.raises(ValueError, match="exactly one"):
        select_channels(scores)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        select_channels(scores, ratio=1.5)


def test_ratio_threshold_is_the_quantile_score():
    scores = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0])
    assert ratio_threshold(scores, 0.4) == 2.0
    assert ratio_threshold(scores, 0.0) == -math.inf
    assert ratio_threshold(scores, 1.0) == 5.0


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda blocks: st.tuples(
            st.just(blocks),
            st.lists(
                st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0, 3.0]),
                min_size=blocks,
                max_size=blocks * 6,
            ).filter(lambda s: len(s) % blocks == 0),
        )
    ),
    st.sampled_from([0.0, 0.5, 1.0, 10.0]),
    st.integers(1, 9),
    st.sampled_from([1, 2, 4, 8]),
)
def test_keep_set_invariants(blocks_scores, threshold, min_keep, multiple):
    blocks, values = blocks_scores
    scores = torch.tensor(values, dtype=F64)
    n = scores.numel()
    keep = select_channels(
        scores, threshold=threshold, blocks=blocks, min_keep=min_keep, multiple=multiple
    )
    per_block = n // blocks
    table = keep.view(blocks, -1)
    assert bool((table[:, 1:] > table[:, :-1]).all())  # sorted, unique
    assert bool(((table // per_block) == torch.arange(blocks).unsqueeze(1)).all())  # equal/block
    assert keep.numel() >= min(n, max(1, min_keep))
    assert keep.numel() % multiple == 0 or keep.numel() == n
    removed = torch.ones(n, dtype=torch.bool)
    removed[keep] = False
    assert bool((scores[removed] <= threshold).all())
    assert keep.numel() == blocks * legal_keep(
        per_block - int((scores.view(blocks, -1) <= threshold).sum(1).min()),
        per_block,
        blocks,
        min_keep,
        multiple,
    )


def _constant_input(n, channels, size, constant_idx, constants):
    """A feature map whose channels in `constant_idx` are the given constants everywhere."""
    x = torch.randn(n, channels, *size, dtype=F64)
    x[:, constant_idx] = constants.view(1, -1, 1, 1)
    return x


@pytest.mark.parametrize("groups,blocks", [(1, 1), (1, 2), (2, 2), (2, 4), (4, 4)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(9, 9), (8, 11)])
def test_carrier_fold_is_exact_at_every_pixel(groups, blocks, stride, size):
    channels, out_ch, per_block = 16, 8, 16 // blocks
    # One dead and one constant channel removed from each block; a third one kept constant.
    removed = torch.tensor([b * per_block + j for b in range(blocks) for j in (0, 2)])
    keep = torch.tensor([c for c in range(channels) if c not in set(removed.tolist())])
    a = torch.zeros(channels, dtype=F64)
    a[removed[1::2]] = torch.rand(blocks, dtype=F64) + 0.5  # the constant ones (negative ok)
    a[removed[1::2][0]] *= -1
    x = _constant_input(2, channels, size, removed, a[removed])
    weight = torch.randn(out_ch, channels // groups, 3, 3, dtype=F64)
    bias = torch.randn(out_ch, dtype=F64)
    ref = F.conv2d(x, weight, bias, stride=stride, padding=1, groups=groups)

    new_w = prune_inputs(weight, groups, keep, a, blocks)
    assert new_w.shape == (out_ch, (keep.numel() + blocks) // groups, 3, 3)
    # The pruned producer delivers the kept channels and one carrier (all ones) per block.
    x_kept = x[:, keep].view(2, blocks, -1, *size)
    ones = torch.ones(2, blocks, 1, *size, dtype=F64)
    x_new = torch.cat([x_kept, ones], dim=2).flatten(1, 2)
    out = F.conv2d(x_new, new_w, bias, stride=stride, padding=1, groups=groups)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("groups,blocks", [(1, 1), (1, 4), (2, 2), (4, 4)])
def test_effective_norms_match_the_built_weight(groups, blocks):
    weight = torch.randn(8, 16 // groups, 3, 3)
    per_block = 16 // blocks
    keep = torch.tensor([c for c in range(16) if c % per_block not in (0, 3)])
    a = torch.randn(16, dtype=F64)
    for constants in (None, a):
        built = filter_norms(prune_inputs(weight, groups, keep, constants, blocks))
        fast = effective_norms(weight, groups, keep, constants, blocks)
        torch.testing.assert_close(fast, built, rtol=1e-6, atol=0)
    # A filter that only reads removed channels is zero once they are gone (with no carrier).
    weight[0] = 0
    weight[0, 0] = 1.0
    assert effective_norms(weight, groups, keep, None, blocks)[0] == 0
    assert effective_norms(weight, groups, keep, a, blocks)[0] > 0  # unless they were constant
    full = torch.arange(16)
    assert bool((carrier_kernels(weight, groups, full, a, blocks) == 0).all())


def test_input_norms_measure_how_a_consumer_reads_each_channel():
    conv = torch.randn(6, 2, 3, 3)  # groups=2: outputs 0-2 read inputs 0-1, 3-5 read 2-3
    conv[:3, 1] = 0
    norms = input_norms(conv, groups=2)
    assert norms.shape == (4,) and norms[1] == 0
    torch.testing.assert_close(norms[2], conv[3:, 0].double().norm())
    assert input_norms(torch.randn(5, 7)).shape == (7,)


def test_selection_without_constants_is_a_plain_column_slice():
    weight = torch.randn(6, 8, 3, 3)
    keep = torch.tensor([0, 3, 5, 6])
    assert torch.equal(prune_inputs(weight, 1, keep), weight[:, keep])
    linear = torch.randn(10, 8)
    assert torch.equal(prune_inputs(linear, 1, keep), linear[:, keep])
    grouped = torch.randn(6, 4, 3, 3)  # groups=2: inputs 0-3 | 4-7
    keep2 = torch.tensor([1, 2, 4, 7])
    expected = torch.cat([grouped[:3][:, [1, 2]], grouped[3:][:, [0, 3]]])
    assert torch.equal(prune_inputs(grouped, 2, keep2, blocks=2), expected)


def test_carrier_column_is_rounded_once_from_float64():
    weight = torch.randn(4, 6, 3, 3)
    keep = torch.tensor([0, 1, 2])
    a = torch.tensor([0.0, 0.0, 0.0, 0.3, -1.7, 2.2], dtype=F64)
    carrier = prune_inputs(weight, 1, keep, a)[:, -1]
    exact = (weight.double()[:, 3:] * a[3:].view(1, -1, 1, 1)).sum(1)
    assert carrier.dtype == torch.float32
    assert torch.equal(carrier, exact.float())


@pytest.mark.parametrize("kernel,padding,stride", [(1, 0, 1), (3, 0, 1), (3, 0, 2), (1, 0, 2)])
def test_scalar_fold_is_exact_when_the_consumer_reads_no_padding(kernel, padding, stride):
    channels = 8
    removed = torch.tensor([1, 4, 6])
    keep = torch.tensor([0, 2, 3, 5, 7])
    a = torch.zeros(channels, dtype=F64)
    a[removed] = torch.tensor([0.7, -1.2, 0.0], dtype=F64)
    x = _constant_input(2, channels, (9, 9), removed, a[removed])
    weight = torch.randn(5, channels, kernel, kernel, dtype=F64)
    bias = torch.randn(5, dtype=F64)
    ref = F.conv2d(x, weight, bias, stride=stride, padding=padding)
    new_b = fold_into_bias(weight, 1, bias, keep, a)
    out = F.conv2d(x[:, keep], prune_inputs(weight, 1, keep), new_b, stride=stride)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_scalar_fold_into_a_linear_head_after_global_pooling_is_exact():
    removed, keep = torch.tensor([0, 3]), torch.tensor([1, 2, 4])
    a = torch.zeros(5, dtype=F64)
    a[removed] = torch.tensor([1.5, -0.25], dtype=F64)
    x = _constant_input(3, 5, (7, 6), removed, a[removed])
    fc_w, fc_b = torch.randn(4, 5, dtype=F64), torch.randn(4, dtype=F64)
    ref = F.linear(x.mean((2, 3)), fc_w, fc_b)
    out = F.linear(
        x[:, keep].mean((2, 3)), prune_inputs(fc_w, 1, keep), fold_into_bias(fc_w, 1, fc_b, keep, a)
    )
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("stride,size", [(1, 10), (2, 10), (2, 11)])
def test_scalar_fold_fails_on_the_padded_border_but_not_inside(stride, size):
    """The classic running-mean/bias absorption under a zero-padded 3x3: exact interior only."""
    removed, keep = torch.tensor([0, 1]), torch.tensor([2, 3, 4, 5])
    a = torch.zeros(6, dtype=F64)
    a[removed] = torch.tensor([1.0, 2.0], dtype=F64)
    x = _constant_input(1, 6, (size, size), removed, a[removed])
    weight = torch.randn(4, 6, 3, 3, dtype=F64).abs() + 0.1  # one sign: no lucky cancellation
    bias = torch.zeros(4, dtype=F64)
    ref = F.conv2d(x, weight, bias, stride=stride, padding=1)
    out = F.conv2d(
        x[:, keep],
        prune_inputs(weight, 1, keep),
        fold_into_bias(weight, 1, bias, keep, a),
        stride=stride,
        padding=1,
    )
    err = (out - ref).abs()
    # Pixels whose 3x3 window reads padding: first row/column always; the last ones only when
    # the window overhangs the bottom/right edge (stride 1, or stride 2 with an odd size).
    border = torch.zeros_like(err, dtype=torch.bool)
    border[..., 0, :] = border[..., :, 0] = True
    last = (out.shape[-1] - 1) * stride + 1 > size - 1
    if last:
        border[..., -1, :] = border[..., :, -1] = True
    assert last == (stride == 1 or size % 2 == 1)
    assert float(err[~border].max()) < 1e-12
    assert bool((err[border] > 0.1).all())


def _bn(c, gen):
    return BNStats(
        torch.randn(c, generator=gen, dtype=F64) * 0.1,
        torch.rand(c, generator=gen, dtype=F64) + 0.5,
        torch.rand(c, generator=gen, dtype=F64) + 0.5,
        torch.randn(c, generator=gen, dtype=F64) * 0.1,
        1e-5,
    )


@pytest.mark.parametrize("groups", [1, 2])
def test_repvgg_fusion_scale_multiplies_kernel_and_bias(groups):
    gen = torch.Generator().manual_seed(1)
    c = 8
    k3 = torch.randn(c, c // groups, 3, 3, generator=gen, dtype=F64)
    k1 = torch.randn(c, c // groups, 1, 1, generator=gen, dtype=F64)
    bn3, bn1, bn_id = _bn(c, gen), _bn(c, gen), _bn(c, gen)
    scale = torch.randn(c, generator=gen, dtype=F64)
    scale[2] = 0.0
    kernel, bias = repvgg_kernel_bias(k3, bn3, k1, bn1, bn_id)
    s_kernel, s_bias = repvgg_kernel_bias(k3, bn3, k1, bn1, bn_id, scale=scale)
    torch.testing.assert_close(s_kernel, kernel * scale.view(-1, 1, 1, 1), rtol=1e-14, atol=0)
    torch.testing.assert_close(s_bias, bias * scale, rtol=1e-14, atol=0)
    # A zero scale zeroes the filter *and* the bias exactly: the channel is dead after ReLU.
    assert bool((s_kernel[2] == 0).all()) and s_bias[2] == 0
    out = (torch.empty_like(k3, dtype=torch.float32), torch.empty(c))
    repvgg_kernel_bias(k3, bn3, k1, bn1, bn_id, scale=scale, out=out)
    assert torch.equal(out[0], s_kernel.float()) and torch.equal(out[1], s_bias.float())
    with pytest.raises(ValueError, match="scale"):
        repvgg_kernel_bias(k3, bn3, scale=torch.ones(c + 1))


def test_repvgg_fusion_is_differentiable_in_the_scale():
    gen = torch.Generator().manual_seed(2)
    k3 = torch.randn(4, 4, 3, 3, generator=gen, dtype=F64)
    bn3 = _bn(4, gen)
    scale = torch.rand(4, dtype=F64, requires_grad=True)
    kernel, bias = repvgg_kernel_bias(k3, bn3, scale=scale)
    (kernel.sum() + bias.sum()).backward()
    base_k, base_b = repvgg_kernel_bias(k3, bn3)
    torch.testing.assert_close(scale.grad, base_k.sum((1, 2, 3)) + base_b)


def test_prune_outputs_appends_carriers_with_passing_bounds():
    w = torch.randn(6, 3, 3, 3)
    b = torch.randn(6)
    relu = (torch.zeros(6, dtype=F64), torch.full((6,), math.inf, dtype=F64))
    keep = torch.tensor([0, 2, 4, 5])
    nw, nb, lo, hi = prune_outputs(w, b, *relu, keep, blocks=2, carriers=True)
    assert torch.equal(nw[[0, 1, 3, 4]], w[keep]) and bool((nw[[2, 5]] == 0).all())
    assert nb[[2, 5]].tolist() == [1.0, 1.0] and torch.equal(nb[[0, 1, 3, 4]], b[keep].double())
    assert lo.tolist() == [0.0] * 6 and hi.tolist() == [math.inf] * 6  # stays a plain ReLU
    mixed = (torch.tensor([0.0] * 3 + [-math.inf] * 3, dtype=F64), relu[1])
    _, _, lo, hi = prune_outputs(w, b, *mixed, keep, carriers=True)
    assert (lo[-1], hi[-1]) == (1.0, 1.0)  # clamp to [1, 1]: outputs 1 whatever the bounds
    with pytest.raises(ValueError, match="same number per block"):
        prune_outputs(w, b, *relu, torch.tensor([0, 1, 2, 4]), blocks=2)
