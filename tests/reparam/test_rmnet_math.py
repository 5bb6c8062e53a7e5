"""The RM operation on tensors: residual blocks in functional ops vs their plain chains."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from repvgg_lab.reparam import BNStats, block_diagonal, rel_max, ungroup
from repvgg_lab.reparam.rmnet import (
    INF,
    PlainConv,
    bypass,
    close,
    folded,
    merge_pointwise,
    remove_residual,
    tap,
)

FAST = settings(max_examples=25, deadline=None)
DTYPES = st.sampled_from([torch.float64, torch.float32])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _stats(channels: int, gen: torch.Generator) -> BNStats:
    """Trained-like BN statistics, in float64."""
    return BNStats(
        torch.randn(channels, generator=gen, dtype=torch.float64) * 0.3,
        torch.rand(channels, generator=gen, dtype=torch.float64) * 1.5 + 0.5,
        torch.rand(channels, generator=gen, dtype=torch.float64) + 0.5,
        torch.randn(channels, generator=gen, dtype=torch.float64) * 0.3,
        1e-5,
    )


def _kernel(out: int, inp: int, k: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(out, inp, k, k, generator=gen, dtype=torch.float64) / math.sqrt(inp * k * k)


def _bn(x: torch.Tensor, s: BNStats) -> torch.Tensor:
    d = x.dtype
    return F.batch_norm(
        x, s.mean.to(d), s.var.to(d), s.weight.to(d), s.bias.to(d), False, 0.0, s.eps
    )


def _conv_bn(x, k, s, stride=1, groups=1):
    return _bn(
        F.conv2d(x, k.to(x.dtype), stride=stride, padding=k.shape[-1] // 2, groups=groups), s
    )


def run_chain(layers: list[PlainConv], x: torch.Tensor) -> torch.Tensor:
    """A plain chain evaluated in the dtype of `x` (kernels rounded once to it)."""
    for layer in layers:
        x = F.conv2d(
            x,
            layer.kernel.to(x.dtype),
            layer.bias.to(x.dtype),
            stride=layer.stride,
            padding=layer.size // 2,
            groups=layer.groups,
        )
        x = torch.clamp(
            x, layer.lower.to(x.dtype)[:, None, None], layer.upper.to(x.dtype)[:, None, None]
        )
    return x


def _bound(dtype: torch.dtype) -> float:
    return 1e-12 if dtype == torch.float64 else 2e-5


@FAST
@given(
    cin=st.integers(1, 6),
    cmid=st.integers(1, 6),
    cout=st.integers(1, 6),
    stride=st.sampled_from([1, 2]),
    projection=st.booleans(),
    size=st.integers(3, 9),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_basic_block_equals_plain_chain(cin, cmid, cout, stride, projection, size, dtype, seed):
    """ResNet BasicBlock (3x3-BN-ReLU-3x3-BN + shortcut, ReLU) == 2 plain convs with ReLUs."""
    projection = projection or stride != 1 or cin != cout
    g = _gen(seed)
    k1, s1, k2, s2 = (
        _kernel(cmid, cin, 3, g),
        _stats(cmid, g),
        _kernel(cout, cmid, 3, g),
        _stats(cout, g),
    )
    kd, sd = _kernel(cout, cin, 1, g), _stats(cout, g)
    x = torch.relu(torch.randn(2, cin, size, size, generator=g, dtype=torch.float64))

    def block(x):
        h = torch.relu(_conv_bn(x, k1, s1, stride))
        sc = _conv_bn(x, kd, sd, stride) if projection else x
        return torch.relu(_conv_bn(h, k2, s2) + sc)

    convs = [folded(k1, s1, 0, INF, stride=stride), folded(k2, s2, 0, INF)]
    shortcut = folded(kd, sd, stride=stride) if projection else None
    plain = remove_residual(convs, shortcut, nonnegative_input=True)
    assert [p.out_channels for p in plain] == [cin + cmid, cout]
    # Post-activation ResNet: the reserved channels need no bounds beyond a plain ReLU.
    assert all(bool((p.lower == 0).all() and (p.upper == INF).all()) for p in plain)
    assert rel_max(block(x), run_chain(plain, x.to(dtype))) <= _bound(dtype)


@FAST
@given(
    cin_groups=st.integers(1, 4),
    group_size=st.integers(1, 4),
    conv2_groups=st.sampled_from([1, 2]),
    cout=st.integers(1, 8),
    stride=st.sampled_from([1, 2]),
    projection=st.booleans(),
    grouped=st.booleans(),
    misaligned=st.booleans(),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_bottleneck_equals_plain_chain(
    cin_groups, group_size, conv2_groups, cout, stride, projection, grouped, misaligned, dtype, seed
):
    """Bottleneck (1x1, grouped 3x3 at stride s, 1x1 + shortcut) == 3 plain convs, grouped or dense.

    The 3x3 carries the reserved channels as extra groups when their count is a multiple of the
    group size, else (misaligned) as RMNet's dense block-diagonal kernel."""
    cin = cin_groups * group_size + (1 if misaligned and group_size > 1 else 0)
    width = group_size * conv2_groups
    projection = projection or stride != 1 or cin != cout
    g = _gen(seed)
    k1, s1 = _kernel(width, cin, 1, g), _stats(width, g)
    k2, s2 = _kernel(width, group_size, 3, g), _stats(width, g)
    k3, s3 = _kernel(cout, width, 1, g), _stats(cout, g)
    kd, sd = _kernel(cout, cin, 1, g), _stats(cout, g)
    x = torch.relu(torch.randn(2, cin, 7, 7, generator=g, dtype=torch.float64))

    def block(x):
        h = torch.relu(_conv_bn(x, k1, s1))
        h = torch.relu(_conv_bn(h, k2, s2, stride, conv2_groups))
        sc = _conv_bn(x, kd, sd, stride) if projection else x
        return torch.relu(_conv_bn(h, k3, s3) + sc)

    convs = [
        folded(k1, s1, 0, INF),
        folded(k2, s2, 0, INF, stride=stride, groups=conv2_groups),
        folded(k3, s3, 0, INF),
    ]
    shortcut = folded(kd, sd, stride=stride) if projection else None
    plain = remove_residual(convs, shortcut, nonnegative_input=True, grouped=grouped)
    aligned = cin % group_size == 0
    expected_groups = cin // group_size + conv2_groups if grouped and aligned else 1
    assert plain[1].groups == expected_groups
    assert plain[1].kernel.shape == (cin + width, (cin + width) // expected_groups, 3, 3)
    assert rel_max(block(x), run_chain(plain, x.to(dtype))) <= _bound(dtype)


@FAST
@given(
    cin=st.integers(1, 6),
    expand=st.sampled_from([1, 2, 6]),
    scale=st.sampled_from([1.0, 8.0]),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_inverted_residual_relu6_equals_plain_chain(cin, expand, scale, dtype, seed):
    """MobileNetV2 residual block with ReLU6 == plain chain with per-channel clamp bounds.

    The block input has either sign and `scale` drives many ReLU6 inputs past 6, so the cap and
    the reserved channels' identity bounds are both exercised. expand=1: no 1x1 expansion."""
    hid = cin * expand
    g = _gen(seed)
    ke, se = _kernel(hid, cin, 1, g) * scale, _stats(hid, g)
    kdw, sdw = _kernel(hid, 1, 3, g) * scale, _stats(hid, g)
    kp, sp = _kernel(cin, hid, 1, g), _stats(cin, g)
    x = torch.randn(2, cin, 6, 6, generator=g, dtype=torch.float64) * 3

    def block(x):
        h = F.relu6(_conv_bn(x, ke, se)) if expand > 1 else x
        h = F.relu6(_conv_bn(h, kdw, sdw, groups=hid))
        return x + _conv_bn(h, kp, sp)

    convs = [folded(kdw, sdw, 0, 6, groups=hid), folded(kp, sp)]
    if expand > 1:
        convs.insert(0, folded(ke, se, 0, 6))
    plain = remove_residual(convs, None, nonnegative_input=False)
    # Reserved channels: identity bounds; the block's own channels keep ReLU6's [0, 6].
    assert bool((plain[0].lower[:cin] == -INF).all() and (plain[0].upper[cin:] == 6).all())
    if expand > 1:
        assert plain[1].groups == cin + hid  # the depthwise 3x3 stays depthwise
    assert rel_max(block(x), run_chain(plain, x.to(dtype))) <= _bound(dtype)


@FAST
@given(
    channels=st.integers(1, 6),
    stride=st.sampled_from([1, 2, 3]),
    size=st.sampled_from([1, 3, 5, 7]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_reserved_channels_are_copied_bit_exactly(channels, stride, size, dtype):
    """The Dirac rows copy x (sampled at the conv's stride) bit for bit, in any dtype."""
    conv = folded(_kernel(2, channels, size, _gen(0)), None, stride=stride)
    layer = tap(conv)
    x = torch.randn(1, channels, 11, 11, dtype=torch.float64).to(dtype)
    out = F.conv2d(
        x, layer.kernel.to(dtype), layer.bias.to(dtype), stride=stride, padding=size // 2
    )
    assert torch.equal(out[:, :channels], x[:, :, ::stride, ::stride])


@FAST
@given(
    groups=st.integers(1, 4),
    per_in=st.integers(1, 3),
    per_out=st.integers(1, 3),
    k=st.sampled_from([1, 3]),
)
def test_ungroup_gives_the_same_conv(groups, per_in, per_out, k):
    """A grouped conv equals the dense conv with its block-diagonal ungrouped kernel."""
    kernel = torch.randn(groups * per_out, per_in, k, k, dtype=torch.float64)
    x = torch.randn(1, groups * per_in, 5, 5, dtype=torch.float64)
    grouped = F.conv2d(x, kernel, padding=k // 2, groups=groups)
    dense = F.conv2d(x, ungroup(kernel, groups), padding=k // 2)
    assert torch.allclose(grouped, dense, rtol=0, atol=1e-13)


def test_block_diagonal_rejects_mixed_sizes():
    with pytest.raises(ValueError, match="spatial size"):
        block_diagonal(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 3, 3))


def test_merge_pointwise_multiplies_linear_1x1_into_the_next():
    """linear 1x1 -> 1x1 (ReLU6) becomes one 1x1; an activated or spatial layer is not merged."""
    g = _gen(1)
    stem = folded(_kernel(4, 3, 3, g), _stats(4, g), 0, 6)
    linear = folded(_kernel(5, 4, 1, g), _stats(5, g))
    expand = folded(_kernel(7, 5, 1, g), _stats(7, g), 0, 6)
    dw = folded(_kernel(7, 1, 3, g), _stats(7, g), 0, 6, groups=7)
    chain = [stem, linear, expand, dw]
    merged = merge_pointwise(chain)
    assert [m.kernel.shape[:2] for m in merged] == [(4, 3), (7, 4), (7, 1)]
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64) * 4
    assert rel_max(run_chain(chain, x), run_chain(merged, x)) <= 1e-13


def test_remove_residual_rejects_inconsistent_shortcuts():
    g = _gen(2)
    a = folded(_kernel(4, 4, 3, g), None, 0, INF, stride=2)
    b = folded(_kernel(4, 4, 3, g), None, 0, INF)
    with pytest.raises(ValueError, match="identity shortcut cannot follow a branch of stride 2"):
        remove_residual([a, b])
    with pytest.raises(ValueError, match="shortcut stride 1 != branch stride 2"):
        remove_residual([a, b], folded(_kernel(4, 4, 1, g), None))
    with pytest.raises(ValueError, match="at least two"):
        remove_residual([b])
    wide = folded(_kernel(6, 4, 3, g), None)
    with pytest.raises(ValueError, match="identity shortcut needs 4 reserved channels == 6"):
        close(wide, 4)
    with pytest.raises(ValueError, match="do not chain"):
        remove_residual([b, wide, b])


def test_bypass_passes_reserved_channels_through_grouped_and_dense():
    """bypass: [x; h] -> [x; conv(h)], exactly, whichever kernel layout carries x."""
    g = _gen(3)
    conv = folded(_kernel(4, 2, 3, g), _stats(4, g), groups=2)
    x = torch.randn(1, 6 + 4, 5, 5, dtype=torch.float64)
    expected = torch.cat([x[:, :6], run_chain([conv], x[:, 6:])], dim=1)
    for grouped, groups in ((True, 5), (False, 1)):
        layer = bypass(conv, 6, grouped=grouped)
        assert layer.groups == groups
        assert rel_max(expected, run_chain([layer], x)) <= 1e-14
    # A depthwise conv with channel multiplier 2 (4 -> 8): groups are not square, so dense.
    widening = folded(_kernel(8, 1, 3, g), _stats(8, g), groups=4)
    x = torch.randn(1, 6 + 4, 5, 5, dtype=torch.float64)
    layer = bypass(widening, 6)
    assert layer.groups == 1
    expected = torch.cat([x[:, :6], run_chain([widening], x[:, 6:])], dim=1)
    assert rel_max(expected, run_chain([layer], x)) <= 1e-14
