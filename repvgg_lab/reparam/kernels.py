"""Kernel algebra for merging parallel branches: padding, identity kernels, sums."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def pad_to(kernel: Tensor, size: int) -> Tensor:
    """Zero-pad a square (O, I, k, k) kernel to (O, I, size, size), keeping it centred."""
    k = kernel.shape[-1]
    if kernel.shape[-2] != k or (size - k) % 2:
        raise ValueError(f"cannot centre a {tuple(kernel.shape[-2:])} kernel in {size}x{size}")
    p = (size - k) // 2
    return F.pad(kernel, (p, p, p, p)) if p else kernel


def identity_kernel(
    channels: int,
    groups: int = 1,
    size: int = 3,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """(C, C/groups, size, size) kernel whose grouped conv (padding size//2) is the identity."""
    if channels % groups:
        raise ValueError(f"channels={channels} is not divisible by groups={groups}")
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, size, size, dtype=dtype, device=device)
    rows = torch.arange(channels, device=kernel.device)
    kernel[rows, rows % per_group, size // 2, size // 2] = 1
    return kernel


def merge(*pairs: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Sum same-shape (kernel, bias) pairs of parallel branches."""
    if not pairs:
        raise ValueError("merge needs at least one (kernel, bias) pair")
    kernel, bias = pairs[0]
    for k, b in pairs[1:]:
        kernel = kernel + k
        bias = bias + b
    return kernel, bias


def block_diagonal(*kernels: Tensor) -> Tensor:
    """Dense kernel of convs run side by side: kernel i maps input block i to output block i."""
    if not kernels:
        raise ValueError("block_diagonal needs at least one kernel")
    sizes = {k.shape[-2:] for k in kernels}
    if len(sizes) != 1:
        raise ValueError(f"kernels differ in spatial size: {sorted(tuple(s) for s in sizes)}")
    first = kernels[0]
    rows = sum(k.shape[0] for k in kernels)
    cols = sum(k.shape[1] for k in kernels)
    out = first.new_zeros((rows, cols, *first.shape[-2:]))
    r = c = 0
    for k in kernels:
        out[r : r + k.shape[0], c : c + k.shape[1]] = k
        r, c = r + k.shape[0], c + k.shape[1]
    return out


def ungroup(kernel: Tensor, groups: int) -> Tensor:
    """The dense (groups=1) kernel computing the same conv as `kernel` with `groups` groups."""
    if kernel.shape[0] % groups:
        raise ValueError(f"{kernel.shape[0]} output channels are not divisible by groups={groups}")
    return block_diagonal(*kernel.chunk(groups, dim=0)) if groups > 1 else kernel
