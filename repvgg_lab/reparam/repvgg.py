"""RepVGG's three branches (kxk+BN, 1x1+BN, identity BN) composed into one kxk conv with bias."""

from __future__ import annotations

import torch
from torch import Tensor

from repvgg_lab.reparam.bn import FUSE_DTYPE, BNStats

# Output channels fused per step: keeps the float64 working set (~4 MB) inside the CPU caches,
# which makes float64 fusion as fast as a plain float32 multiply over the kernel.
_CHUNK_ELEMENTS = 1 << 19


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
    dtype = dtype or k3.dtype
    out_channels, per_group, kh, kw = k3.shape
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"expected an odd square kernel, got {kh}x{kw}")
    c = kh // 2
    scale3, bias = bn3.scale_shift()
    # Centre tap: the kxk term plus the 1x1 and identity terms, summed in float64.
    centre = k3[:, :, c, c].to(FUSE_DTYPE) * scale3[:, None]
    if k1 is not None:
        if bn1 is None or k1.shape != (out_channels, per_group, 1, 1):
            raise ValueError(f"1x1 kernel {tuple(k1.shape)} does not match {tuple(k3.shape)}")
        scale1, shift1 = bn1.scale_shift()
        centre = centre + k1[:, :, 0, 0].to(FUSE_DTYPE) * scale1[:, None]
        bias = bias + shift1
    if bn_id is not None:
        scale_id, shift_id = bn_id.scale_shift()
        rows = torch.arange(out_channels, device=k3.device)
        centre = centre.index_put((rows, rows % per_group), scale_id, accumulate=True)
        bias = bias + shift_id
    tap_scale = scale3
    if scale is not None:
        if scale.shape != (out_channels,):
            raise ValueError(f"scale {tuple(scale.shape)} does not match {out_channels} channels")
        s = scale.to(FUSE_DTYPE)
        tap_scale, centre, bias = scale3 * s, centre * s[:, None], bias * s

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
