"""The general fusion: parallel linear branches summed into one conv kernel and bias.

Every branch of a re-parameterizable block (a kxk conv, a 1x1, a 1xk, a kx1, an identity, a
1x1 followed by a kxk conv or by average pooling, each with its BN in eval mode) is a *term*: a
kernel placed at an offset inside the block's kh x kw frame, a per-output-channel scale (the BN's
gamma / sqrt(var + eps)) and a bias. `fuse` sums the terms in float64 and rounds once. RepVGG's,
QARepVGG's, ACNet's, DBB's and MobileOne's blocks are all calls of it.

The same arithmetic builds an online block's kernel in every training forward (OREPA): `work`
names the dtype the sums run in (float64 for a conversion, the model's dtype in a forward pass),
and everything stays differentiable.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from repvgg_lab.reparam.bn import FUSE_DTYPE, BNStats
from repvgg_lab.reparam.kernels import identity_kernel

# Output channels fused per step: keeps the float64 working set (~4 MB) inside the CPU caches,
# which makes float64 fusion as fast as a plain float32 multiply over the kernel.
_CHUNK_ELEMENTS = 1 << 19


class Term(NamedTuple):
    """One branch as a conv: `kernel * scale` (per output channel) placed at `offset`, plus `bias`.

    `kernel` None means the identity (scale on each channel's own input at `offset`); `scale`
    None means 1; `bias` None means 0. Kernels may be any dtype (they are read in float64)."""

    kernel: Tensor | None
    scale: Tensor | None
    bias: Tensor | None
    offset: tuple[int, int] = (0, 0)


def bn_term(
    kernel: Tensor | None,
    stats: BNStats | None,
    offset: tuple[int, int] = (0, 0),
    conv_bias: Tensor | None = None,
) -> Term:
    """The term of BN(conv(x)) (or of conv(x) when `stats` is None; of BN(x) when `kernel` is
    None). A conv bias goes through the BN: its scale multiplies it."""
    if stats is None:
        bias = None if conv_bias is None else conv_bias.to(FUSE_DTYPE)
        return Term(kernel, None, bias, offset)
    scale, shift = stats.scale_shift()
    if conv_bias is not None:
        shift = shift + conv_bias.to(FUSE_DTYPE) * scale
    return Term(kernel, scale, shift, offset)


def _add_identity(
    block: Tensor, rows: slice, scale: Tensor | None, offset: tuple[int, int]
) -> None:
    """block += `scale` (1 when None) on each output channel's own input (its column within its
    group), at frame tap `offset`."""
    count, per_group = block.shape[:2]
    local = torch.arange(count, device=block.device)
    value = block.new_ones(count) if scale is None else scale[rows].to(block.dtype)
    block[local, (local + rows.start) % per_group, offset[0], offset[1]] += value


def _add_term(
    block: Tensor | None, rows: slice, term: Term, shape: tuple[int, ...], work: torch.dtype
) -> Tensor:
    """block + term on output channels `rows`, in `work` (in place on `block`, which the sum
    owns; autograd follows); `block` None starts from zero."""
    if term.kernel is not None:
        kernel = term.kernel[rows]
        if term.scale is None:
            part = kernel.to(work, copy=True)  # a copy: later terms are added to it in place
        else:  # promotes a narrower kernel to `work` inside the product: one rounding at most
            part = (kernel * term.scale[rows].to(work).view(-1, 1, 1, 1)).to(work)
        if block is None and part.shape == shape:
            return part
    if block is None:
        block = torch.zeros(shape, dtype=work, device=_device(term))
    if term.kernel is None:
        _add_identity(block, rows, term.scale, term.offset)
    else:
        r, c = term.offset
        block[:, :, r : r + part.shape[2], c : c + part.shape[3]] += part
    return block


def _device(term: Term) -> torch.device | None:
    for t in (term.kernel, term.scale, term.bias):
        if t is not None:
            return t.device
    return None


def _check_shapes(terms: list[Term], shape: tuple[int, ...], scale: Tensor | None) -> None:
    """ValueError unless every term (and `scale`) fits a kernel of `shape`."""
    if not terms:
        raise ValueError("fuse needs at least one term")
    out_channels = shape[0]
    for t in terms:
        for name, v in (("scale", t.scale), ("bias", t.bias)):
            if v is not None and v.shape != (out_channels,):
                raise ValueError(
                    f"term {name} {tuple(v.shape)} does not match {out_channels} channels"
                )
        if t.kernel is not None and (t.kernel.shape[:2] != shape[:2] or t.kernel.dim() != 4):
            raise ValueError(f"kernel {tuple(t.kernel.shape)} does not match {tuple(shape)}")
    if scale is not None and scale.shape != (out_channels,):
        raise ValueError(f"scale {tuple(scale.shape)} does not match {out_channels} channels")


def _fused_rows(
    terms: list[Term], shape: tuple[int, ...], rows: slice, scale: Tensor | None, work: torch.dtype
) -> Tensor:
    """The fused kernel's output channels `rows`, in `work`."""
    block = None
    for term in terms:
        block = _add_term(block, rows, term, (rows.stop - rows.start, *shape[1:]), work)
    if scale is not None:
        block = block * scale[rows].to(work).view(-1, 1, 1, 1)
    return block


def fuse(
    terms: list[Term],
    shape: tuple[int, int, int, int],
    *,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    dtype: torch.dtype | None = None,
    out: tuple[Tensor, Tensor] | None = None,
    work: torch.dtype = FUSE_DTYPE,
) -> tuple[Tensor, Tensor]:
    """(kernel, bias) of shape `shape` = (out, in/groups, kh, kw) equivalent to the sum of `terms`,
    then times `scale` and plus `shift` (per output channel: a gate, or a BN acting on the sum).

    Computed in `work` (float64: a conversion) and rounded once to `dtype` (default: the first
    kernel's dtype); `out` receives the result in place when given. Differentiable when called
    with grad enabled (an online block's forward, `work` = its dtype). A zero `scale` gives an
    exactly zero filter and bias."""
    _check_shapes(terms, shape, scale)
    out_channels = shape[0]
    kernels = [t.kernel for t in terms if t.kernel is not None]
    dtype = dtype or (kernels[0].dtype if kernels else torch.get_default_dtype())
    device = _device(terms[0])
    per_row = max(1, shape[1] * shape[2] * shape[3])
    # float64 in chunks of output channels that stay in cache; other work dtypes in one go.
    step = max(1, _CHUNK_ELEMENTS // per_row) if work == FUSE_DTYPE else out_channels
    if out is None and step >= out_channels:
        kernel = _fused_rows(terms, shape, slice(0, out_channels), scale, work).to(dtype)
    else:
        kernel = out[0] if out is not None else torch.empty(shape, dtype=dtype, device=device)
        for start in range(0, out_channels, step):
            rows = slice(start, min(start + step, out_channels))
            kernel[rows] = _fused_rows(terms, shape, rows, scale, work)
    bias = torch.zeros(out_channels, dtype=work, device=device)
    for t in terms:
        if t.bias is not None:
            bias = bias + t.bias.to(work)
    if scale is not None:
        bias = bias * scale.to(work)
    if shift is not None:
        bias = bias + shift.to(work)
    if out is not None:
        out[1].copy_(bias)
        return out
    return kernel, bias.to(dtype)


def average_kernel(
    channels: int,
    groups: int,
    size: tuple[int, int],
    *,
    dtype: torch.dtype = FUSE_DTYPE,
    device: torch.device | str | None = None,
) -> Tensor:
    """(channels, channels/groups, kh, kw) kernel of kh x kw average pooling as a grouped conv
    (zero padding counted, i.e. `count_include_pad=True`)."""
    taps = identity_kernel(channels, groups, 1, dtype=dtype, device=device)
    return taps.repeat(1, 1, *size) / (size[0] * size[1])


def compose(first: Term, second: Term, groups: int, *, work: torch.dtype = FUSE_DTYPE) -> Term:
    """The term of `second` applied to the output of the 1x1 term `first` (both grouped with
    `groups`), where the map between them is padded with first's bias (not zeros), so that the
    composition is one conv at every pixel, borders included (Diverse Branch Block's rule).

    With F = first.kernel * first.scale and (K, s, t) second's kernel, scale and bias:
    kernel = s * (K o F) and bias = t + s * sum(K * first.bias), per group. Computed in `work`
    (differentiable); without biases the map's padding is zeros, and the composition is exact
    for an ordinary zero-padded 1x1 -> kxk chain (OREPA's online branches)."""
    if first.kernel is None or first.kernel.shape[2:] != (1, 1) or second.kernel is None:
        raise ValueError("compose needs a 1x1 first kernel and a second kernel")
    f = first.kernel[:, :, 0, 0].to(work)
    if first.scale is not None:
        f = f * first.scale.to(work)[:, None]
    k = second.kernel.to(work)
    mid, out = f.shape[0], k.shape[0]
    if k.shape[1] * groups != mid or mid % groups or out % groups:
        raise ValueError(f"kernels {tuple(f.shape)} and {tuple(k.shape)} do not chain")
    kg = k.view(groups, out // groups, mid // groups, *k.shape[2:])
    fg = f.view(groups, mid // groups, f.shape[1])
    kernel = torch.einsum("gomhw,gmi->goihw", kg, fg).reshape(out, f.shape[1], *k.shape[2:])
    carried = torch.zeros(out, dtype=work, device=k.device)
    if first.bias is not None:
        t1 = first.bias.to(work).view(groups, mid // groups)
        carried = torch.einsum("gomhw,gm->go", kg, t1).reshape(out)
    scale = second.scale.to(work) if second.scale is not None else None
    if scale is not None:
        carried = carried * scale
    if second.bias is not None:
        carried = second.bias.to(work) + carried
    return Term(kernel, scale, carried, second.offset)
