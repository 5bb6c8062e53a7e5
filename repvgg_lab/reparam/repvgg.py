"""RepVGG-style branches composed into one kxk conv with bias: RepVGG's (kxk+BN, 1x1+BN,
identity BN) and QARepVGG's (kxk+BN, plain 1x1, plain identity, then one BN on the sum)."""

from __future__ import annotations

import torch
from torch import Tensor

from repvgg_lab.reparam.bn import FUSE_DTYPE, BNStats

# Output channels fused per step: keeps the float64 working set (~4 MB) inside the CPU caches,
# which makes float64 fusion as fast as a plain float32 multiply over the kernel.
_CHUNK_ELEMENTS = 1 << 19


def _kxk_terms(k3: Tensor, bn3: BNStats) -> tuple[int, Tensor, Tensor, Tensor]:
    """(centre index, per-channel tap scale, float64 centre taps, float64 bias) of BN(conv(x))."""
    _, _, kh, kw = k3.shape
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"expected an odd square kernel, got {kh}x{kw}")
    c = kh // 2
    scale3, bias = bn3.scale_shift()
    return c, scale3, k3[:, :, c, c].to(FUSE_DTYPE) * scale3[:, None], bias


def _taps_1x1(k1: Tensor, k3: Tensor) -> Tensor:
    """The 1x1 kernel as float64 (out, in/groups) centre taps, checked against the kxk kernel."""
    if k1.shape != (k3.shape[0], k3.shape[1], 1, 1):
        raise ValueError(f"1x1 kernel {tuple(k1.shape)} does not match {tuple(k3.shape)}")
    return k1[:, :, 0, 0].to(FUSE_DTYPE)


def _add_identity(centre: Tensor, scale: Tensor) -> Tensor:
    """Centre taps plus `scale` on each channel's own input (its column within its group)."""
    out_channels, per_group = centre.shape
    rows = torch.arange(out_channels, device=centre.device)
    return centre.index_put((rows, rows % per_group), scale, accumulate=True)


def _round_once(
    k3: Tensor,
    c: int,
    tap_scale: Tensor,
    centre: Tensor,
    bias: Tensor,
    *,
    scale: Tensor | None,
    dtype: torch.dtype | None,
    out: tuple[Tensor, Tensor] | None,
) -> tuple[Tensor, Tensor]:
    """Kernel k3 * tap_scale with `centre` as its centre taps, times `scale`, rounded once."""
    dtype = dtype or k3.dtype
    out_channels = k3.shape[0]
    if scale is not None:
        if scale.shape != (out_channels,):
            raise ValueError(f"scale {tuple(scale.shape)} does not match {out_channels} channels")
        s = scale.to(FUSE_DTYPE)
        tap_scale, centre, bias = tap_scale * s, centre * s[:, None], bias * s
    kernel = out[0] if out is not None else k3.new_empty(k3.shape, dtype=dtype)
    step = max(1, _CHUNK_ELEMENTS // max(1, k3[0].numel()))
    for start in range(0, out_channels, step):
        rows = slice(start, start + step)
        block = k3[rows].to(FUSE_DTYPE, copy=True)
        block.mul_(tap_scale[rows].view(-1, 1, 1, 1))
        block[:, :, c, c] = centre[rows]
        kernel[rows] = block
    if out is not None:
        out[1].copy_(bias)
        return out
    return kernel, bias.to(dtype)


def repvgg_kernel_bias(
    k3: Tensor,
    bn3: BNStats,
    k1: Tensor | None = None,
    bn1: BNStats | None = None,
    bn_id: BNStats | None = None,
    *,
    dtype: torch.dtype | None = None,
    out: tuple[Tensor, Tensor] | None = None,
    scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Equivalent (kernel, bias) of BN(conv_kxk(x)) + BN(conv_1x1(x)) + BN(x), times `scale`.

    Works for any `groups` (read from the kernel shapes), computes in float64 and rounds once to
    `dtype` (default: the dtype of `k3`). `out` receives the result in place when given.
    `scale` (one value per output channel, e.g. a learnable gate on the branch sum) multiplies
    both kernel and bias, so a zero scale gives an exactly zero filter *and* bias.
    Differentiable when called with grad enabled.
    """
    c, scale3, centre, bias = _kxk_terms(k3, bn3)
    if k1 is not None:
        if bn1 is None:
            raise ValueError(
                f"1x1 kernel {tuple(k1.shape)} does not match bn1=None (a 1x1 branch without "
                "its own BN is QARepVGG's: qarepvgg_kernel_bias)"
            )
        scale1, shift1 = bn1.scale_shift()
        centre = centre + _taps_1x1(k1, k3) * scale1[:, None]
        bias = bias + shift1
    if bn_id is not None:
        scale_id, shift_id = bn_id.scale_shift()
        centre, bias = _add_identity(centre, scale_id), bias + shift_id
    return _round_once(k3, c, scale3, centre, bias, scale=scale, dtype=dtype, out=out)


def qarepvgg_kernel_bias(
    k3: Tensor,
    bn3: BNStats,
    k1: Tensor | None,
    bn: BNStats,
    *,
    identity: bool,
    dtype: torch.dtype | None = None,
    out: tuple[Tensor, Tensor] | None = None,
    scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Equivalent (kernel, bias) of BN(BN3(conv_kxk(x)) + conv_1x1(x) + x), times `scale`.

    The QARepVGG block: only the kxk branch has its own BN, the 1x1 conv (if any) and the
    identity (if `identity`) are added unnormalised, and `bn` acts on the sum. With (s, t) the
    scale and shift of `bn`: K = s * (K3' + pad(K1) + I), b = s * b3' + t. Same contract as
    `repvgg_kernel_bias` (any groups, float64 rounded once, `out`, `scale`, differentiable).
    """
    c, scale3, centre, bias = _kxk_terms(k3, bn3)
    if k1 is not None:
        centre = centre + _taps_1x1(k1, k3)
    if identity:
        centre = _add_identity(centre, centre.new_ones(k3.shape[0]))
    s, t = bn.scale_shift()
    tap_scale, centre, bias = scale3 * s, centre * s[:, None], bias * s + t
    return _round_once(k3, c, tap_scale, centre, bias, scale=scale, dtype=dtype, out=out)
