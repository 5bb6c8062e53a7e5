"""The RM operation on tensors: remove a residual connection from a chain of convolutions.

A residual block y = act(conv_n(...act(conv_1(x))...) + P(x)) becomes a plain chain: the first conv
also outputs a copy of `x` in extra "reserved" channels (`tap`), every middle conv passes those
channels through unchanged (`bypass`), and the last conv adds them, or their 1x1 projection P, to
its output (`close`). Every conv here is already BN-folded, in float64; the kernels that move the
reserved channels are exact 0/1 Diracs, so in real arithmetic the plain chain *is* the block.

The activations between the convs must leave the reserved channels alone. Each layer therefore
carries per-channel clamp bounds: (-inf, inf) on reserved channels always works; (0, inf) (a plain
ReLU) works when the block input is known to be >= 0, as in post-activation ResNets. Bounds are
structural, not learned, so they live on the CPU in float64 whatever the kernels' device.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from repvgg_lab.reparam.bn import FUSE_DTYPE, BNStats, fuse_conv_bn
from repvgg_lab.reparam.kernels import block_diagonal, identity_kernel, pad_to, ungroup

INF = math.inf


class PlainConv(NamedTuple):
    """One plain layer in float64: conv (padding k//2, with bias) then clamp(lower, upper)."""

    kernel: Tensor  # (out_channels, in_channels // groups, k, k)
    bias: Tensor  # (out_channels,)
    lower: Tensor  # (out_channels,) float64 on the CPU
    upper: Tensor
    stride: int = 1
    groups: int = 1

    @property
    def in_channels(self) -> int:
        return self.kernel.shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        return self.kernel.shape[0]

    @property
    def size(self) -> int:
        return self.kernel.shape[-1]

    @property
    def is_linear(self) -> bool:
        """True when the activation is the identity on every channel."""
        return bool((self.lower == -INF).all()) and bool((self.upper == INF).all())


def bounds(channels: int, lower: float, upper: float) -> tuple[Tensor, Tensor]:
    """Constant per-channel clamp bounds (CPU, float64)."""
    kw = {"dtype": torch.float64, "device": "cpu"}
    return torch.full((channels,), lower, **kw), torch.full((channels,), upper, **kw)


def folded(
    kernel: Tensor,
    stats: BNStats | None,
    lower: float = -INF,
    upper: float = INF,
    *,
    stride: int = 1,
    groups: int = 1,
    conv_bias: Tensor | None = None,
) -> PlainConv:
    """conv -> BN (eval statistics) -> clamp, as one float64 PlainConv (BN may be absent)."""
    if stats is None:
        kernel64 = kernel.to(FUSE_DTYPE)
        bias = (
            conv_bias.to(FUSE_DTYPE)
            if conv_bias is not None
            else kernel64.new_zeros(kernel.shape[0])
        )
    else:
        kernel64, bias = fuse_conv_bn(kernel, stats, conv_bias)
    return PlainConv(kernel64, bias, *bounds(kernel.shape[0], lower, upper), stride, groups)


def _dirac(channels: int, like: Tensor, size: int, groups: int = 1) -> Tensor:
    return identity_kernel(channels, groups, size, dtype=FUSE_DTYPE, device=like.device)


def _reserved_bounds(channels: int, nonnegative_input: bool) -> tuple[Tensor, Tensor]:
    # ReLU is the identity on x >= 0, so a post-activation ResNet keeps plain ReLUs everywhere.
    return bounds(channels, 0.0 if nonnegative_input else -INF, INF)


def tap(conv: PlainConv, nonnegative_input: bool = False) -> PlainConv:
    """Output [x; conv(x)]: the conv's input, sampled at its stride, ahead of its own output."""
    cin = conv.in_channels
    kernel = ungroup(conv.kernel, conv.groups)
    lo, hi = _reserved_bounds(cin, nonnegative_input)
    return PlainConv(
        torch.cat([_dirac(cin, kernel, conv.size), kernel]),
        torch.cat([conv.bias.new_zeros(cin), conv.bias]),
        torch.cat([lo, conv.lower]),
        torch.cat([hi, conv.upper]),
        conv.stride,
    )


def bypass(
    conv: PlainConv, reserved: int, nonnegative_input: bool = False, grouped: bool = True
) -> PlainConv:
    """Input [x; h] -> output [x; conv(h)] for `reserved` leading channels x.

    Grouped form (the default): x travels through extra groups of the conv's own group size, a
    grouped Dirac, so it costs reserved * group_size * k^2 per pixel instead of the dense
    (reserved + C)^2 * k^2 of a single dense conv. Falls back to that dense block-diagonal form
    when `grouped` is False, `reserved` is not a multiple of the group size, or the conv's groups
    are not square (a grouped conv needs the same in/out width in every group)."""
    per_group = conv.kernel.shape[1]
    lo, hi = _reserved_bounds(reserved, nonnegative_input)
    square = conv.out_channels == conv.in_channels
    if grouped and square and reserved % per_group == 0:
        kernel = torch.cat(
            [_dirac(reserved, conv.kernel, conv.size, reserved // per_group), conv.kernel]
        )
        groups = reserved // per_group + conv.groups
    else:
        kernel = block_diagonal(
            _dirac(reserved, conv.kernel, conv.size), ungroup(conv.kernel, conv.groups)
        )
        groups = 1
    return PlainConv(
        kernel,
        torch.cat([conv.bias.new_zeros(reserved), conv.bias]),
        torch.cat([lo, conv.lower]),
        torch.cat([hi, conv.upper]),
        conv.stride,
        groups,
    )


def close(conv: PlainConv, reserved: int, shortcut: PlainConv | None = None) -> PlainConv:
    """Input [x; h] -> output conv(h) + x (identity shortcut) or + shortcut(x) (projection).

    The shortcut is a 1x1 conv; its stride must already have been applied to x upstream (a kxk
    centre tap at stride s and padding k//2 samples the same pixels as a 1x1 at stride s)."""
    kernel = ungroup(conv.kernel, conv.groups)
    if shortcut is None:
        if reserved != conv.out_channels:
            raise ValueError(
                f"identity shortcut needs {reserved} reserved channels == {conv.out_channels} "
                "outputs; give the projection shortcut"
            )
        carried, bias = _dirac(reserved, kernel, conv.size), conv.bias
    else:
        if shortcut.size != 1 or shortcut.groups != 1:
            raise ValueError("the projection shortcut must be a dense 1x1 conv")
        if shortcut.kernel.shape[:2] != (conv.out_channels, reserved):
            raise ValueError(
                f"projection shortcut {tuple(shortcut.kernel.shape[:2])} does not map "
                f"{reserved} reserved channels to {conv.out_channels} outputs"
            )
        carried = pad_to(shortcut.kernel.to(FUSE_DTYPE), conv.size)
        bias = conv.bias + shortcut.bias
    return PlainConv(torch.cat([carried, kernel], dim=1), bias, conv.lower, conv.upper, conv.stride)


def remove_residual(
    convs: list[PlainConv],
    shortcut: PlainConv | None = None,
    *,
    nonnegative_input: bool = False,
    grouped: bool = True,
) -> list[PlainConv]:
    """Plain chain equal to act_n(conv_n(...conv_1(x)) + shortcut(x)) for a residual branch.

    `convs[-1]` carries the activation applied after the addition. With `nonnegative_input`
    (the caller guarantees x >= 0) the reserved channels get ReLU bounds instead of none."""
    if len(convs) < 2:
        raise ValueError("the RM operation needs a branch of at least two convolutions")
    for a, b in zip(convs, convs[1:], strict=False):
        if a.out_channels != b.in_channels:
            raise ValueError(f"branch convs do not chain: {a.out_channels} -> {b.in_channels}")
    stride = math.prod(c.stride for c in convs)
    if shortcut is None and stride != 1:
        raise ValueError(f"an identity shortcut cannot follow a branch of stride {stride}")
    if shortcut is not None and shortcut.stride != stride:
        raise ValueError(f"shortcut stride {shortcut.stride} != branch stride {stride}")
    reserved = convs[0].in_channels
    middle = [bypass(c, reserved, nonnegative_input, grouped) for c in convs[1:-1]]
    return [tap(convs[0], nonnegative_input), *middle, close(convs[-1], reserved, shortcut)]


def merge_pointwise(layers: list[PlainConv]) -> list[PlainConv]:
    """Multiply each linear dense 1x1 layer into a following dense 1x1 (W2 W1, W2 b1 + b2)."""
    out: list[PlainConv] = []
    for layer in layers:
        prev = out[-1] if out else None
        if (
            prev is not None
            and prev.is_linear
            and prev.size == layer.size == 1
            and prev.groups == layer.groups == 1
        ):
            w1, w2 = prev.kernel[:, :, 0, 0], layer.kernel[:, :, 0, 0]
            out[-1] = PlainConv(
                (w2 @ w1)[:, :, None, None],
                w2 @ prev.bias + layer.bias,
                layer.lower,
                layer.upper,
                prev.stride * layer.stride,  # 1x1 convs without padding: strides compose
            )
        else:
            out.append(layer)
    return out
