"""Channel-pruning math for a plain conv chain: filter scores, keep sets, exact constant folding.

A removed output channel c is treated as having a zero filter, so after its clamp activation it
is the constant a_c = clamp(b_c, lo_c, hi_c) on every real pixel, while the consumer conv still
reads 0 in its zero padding. Dead channels (a_c = 0) just vanish. A constant channel cannot be
folded into the consumer's bias when the consumer pads: its border taps read 0, not a_c. Instead
a *carrier* channel (zero filter, bias 1, activation passing 1) stays in the producer and the
consumer gets the input slice sum_c a_c K[:, c]; the carrier is padded exactly like the channels
it replaces, so the result is exact at every pixel. Where the consumer reads no padding (padding
0, or global pooling into a linear head) the scalar fold a_c * sum_taps K into its bias is exact.

Grouped convs: a layer's channels are split into `blocks` equal contiguous blocks (the lcm of the
producer's and the consumer's groups) and every block keeps as many channels as the others, and
gets its own carrier, so both convs keep their group count. Selections are plain copies; every
folded value (carrier slices, bias folds) is summed in float64 and rounded once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from repvgg_lab.reparam.bn import FUSE_DTYPE

# Guards floor(ratio * n) against binary fractions such as 0.29 * 100 = 28.999999999999996.
_RATIO_EPS = 1e-9


def filter_norms(weight: Tensor) -> Tensor:
    """L2 norm of each output channel's filter, in float64 (conv or linear weights)."""
    return weight.detach().to(FUSE_DTYPE).flatten(1).norm(dim=1)


def input_norms(weight: Tensor, groups: int = 1) -> Tensor:
    """L2 norm of the weights with which a consumer (conv or linear) reads each of its input
    channels, in float64; 0 means the channel is never read."""
    w = weight.detach().to(FUSE_DTYPE)
    if w.dim() == 2:
        w = w[:, :, None, None]
    out_ch, per_group = w.shape[:2]
    squares = w.reshape(groups, out_ch // groups, per_group, -1).pow(2).sum(dim=(1, 3))
    return squares.sqrt().flatten()


def constant_outputs(bias: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """What each channel outputs when its filter is zero: clamp(bias, lower, upper), float64."""
    b = bias.detach().to(FUSE_DTYPE)
    return torch.minimum(torch.maximum(b, lower.to(FUSE_DTYPE)), upper.to(FUSE_DTYPE))


def ratio_threshold(scores: Tensor, ratio: float) -> float:
    """The score at or below which a fraction `ratio` of `scores` lies (-inf: remove nothing)."""
    _check_ratio(ratio)
    ordered = scores.detach().to(FUSE_DTYPE).flatten().sort().values
    n = math.floor(ratio * ordered.numel() + _RATIO_EPS)
    return float(ordered[n - 1]) if n > 0 else -math.inf


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"pruning ratio must lie in [0, 1], got {ratio}")


def legal_keep(wanted: int, per_block: int, blocks: int, min_keep: int, multiple: int) -> int:
    """Channels kept per block: at least `wanted`, 1 and min_keep/blocks, with blocks * result a
    multiple of `multiple` (rounded up, so never fewer than asked), and at most the block size."""
    if min_keep < 1 or multiple < 1:
        raise ValueError(f"min_channels and multiple must be >= 1, got {min_keep}, {multiple}")
    step = multiple // math.gcd(multiple, blocks)
    k = max(wanted, -(-min_keep // blocks), 1)
    return min(-(-k // step) * step, per_block)


def select_channels(
    scores: Tensor,
    *,
    threshold: float | None = None,
    ratio: float | None = None,
    blocks: int = 1,
    min_keep: int = 1,
    multiple: int = 1,
) -> Tensor:
    """Sorted indices of the output channels to keep, the same number in each of `blocks` blocks.

    Threshold mode removes only channels scoring <= threshold (per block, as many as the block
    with the fewest such channels allows); ratio mode removes the lowest-scoring floor(ratio * n)
    per block. Never keeps fewer than max(1, min_keep) channels in all."""
    if (threshold is None) == (ratio is None):
        raise ValueError("give exactly one of threshold and ratio")
    s = scores.detach().to(FUSE_DTYPE).flatten()
    if bool(torch.isnan(s).any()):
        raise ValueError("channel scores contain NaN")
    if blocks < 1 or s.numel() % blocks:
        raise ValueError(f"{s.numel()} channels cannot be split into {blocks} equal blocks")
    per_block = s.numel() // blocks
    s = s.view(blocks, per_block)
    if threshold is not None:
        removable = int((s <= threshold).sum(dim=1).min())
    else:
        _check_ratio(ratio)
        removable = math.floor(ratio * per_block + _RATIO_EPS)
    k = legal_keep(per_block - removable, per_block, blocks, min_keep, multiple)
    # Highest scores first; `stable` keeps the lower index among ties, so results are reproducible.
    top = torch.argsort(s, dim=1, descending=True, stable=True)[:, :k].sort(dim=1).values
    offsets = torch.arange(blocks, device=top.device).unsqueeze(1) * per_block
    return (top + offsets).flatten()


def _block_local(keep: Tensor, channels: int, blocks: int) -> Tensor:
    """`keep` as a (blocks, k) table of indices inside each block; checks it is a legal keep set."""
    if channels % blocks:
        raise ValueError(f"{channels} channels cannot be split into {blocks} equal blocks")
    per_block = channels // blocks
    keep = keep.to(torch.long).flatten()
    if keep.numel() == 0 or keep.numel() % blocks:
        raise ValueError(f"keep set of {keep.numel()} channels is not split evenly into {blocks}")
    table = keep.view(blocks, -1)
    offsets = torch.arange(blocks, device=keep.device).unsqueeze(1) * per_block
    local = table - offsets
    if bool((local < 0).any() or (local >= per_block).any()) or bool(
        (table[:, 1:] <= table[:, :-1]).any()
    ):
        raise ValueError("keep must be sorted, unique, and hold the same number per block")
    return local


def _removed_constants(constants: Tensor, keep: Tensor) -> Tensor:
    a = constants.detach().to(FUSE_DTYPE).clone()
    a[keep] = 0.0
    return a


def _columns(w: Tensor, groups: int, channels: Tensor, blocks: int) -> Tensor:
    """Input columns `channels` (sorted, the same number per block) of a (O, I/groups, k, k)
    weight, as a (groups, O/groups, blocks/groups, n_per_block, k, k) view of a copy."""
    out_ch, per_group, kh, kw = w.shape
    blocks_per_group = _blocks_per_group(out_ch, groups, blocks)
    local = _block_local(channels, per_group * groups, blocks)
    # Indices inside their group (blocks never straddle a group).
    offsets = (torch.arange(blocks, device=local.device) % blocks_per_group) * (
        per_group // blocks_per_group
    )
    index = (local + offsets.unsqueeze(1)).view(groups, 1, -1, 1, 1)
    w5 = w.reshape(groups, out_ch // groups, per_group, kh, kw)
    taken = w5.gather(2, index.expand(-1, w5.shape[1], -1, kh, kw))
    return taken.view(groups, out_ch // groups, blocks_per_group, local.shape[1], kh, kw)


def _blocks_per_group(out_ch: int, groups: int, blocks: int) -> int:
    if blocks % groups or out_ch % groups:
        raise ValueError(f"blocks={blocks} must be a multiple of the consumer's groups={groups}")
    return blocks // groups


def _as_conv(weight: Tensor) -> Tensor:
    w = weight.detach()
    return w[:, :, None, None] if w.dim() == 2 else w


def prune_inputs(
    weight: Tensor,
    groups: int,
    keep: Tensor,
    constants: Tensor | None = None,
    blocks: int = 1,
) -> Tensor:
    """The consumer's weight (conv (O, I/groups, k, k) or linear (O, I)) on the kept input
    channels, in its own dtype. With `constants` (a_c for every input channel; kept entries
    ignored) each block's kept columns are followed by one carrier column
    sum_{c removed} a_c K[:, c], summed in float64 and rounded once."""
    w = _as_conv(weight)
    out_ch, _, kh, kw = w.shape
    kept = _columns(w, groups, keep, blocks)
    if constants is not None:
        carrier = carrier_kernels(w, groups, keep, constants, blocks).to(w.dtype)
        kept = torch.cat([kept, carrier.view(*kept.shape[:3], 1, kh, kw)], dim=3)
    out = kept.reshape(out_ch, -1, kh, kw)
    return out[:, :, 0, 0] if weight.dim() == 2 else out


def carrier_kernels(
    weight: Tensor, groups: int, keep: Tensor, constants: Tensor, blocks: int = 1
) -> Tensor:
    """The consumer's carrier slices, float64 (O, blocks/groups, k, k): for each block, the sum
    over its removed input channels c of a_c K[:, c]."""
    w = _as_conv(weight)
    out_ch, per_group, kh, kw = w.shape
    blocks_per_group = _blocks_per_group(out_ch, groups, blocks)
    _block_local(keep, per_group * groups, blocks)
    removed = torch.ones(per_group * groups, dtype=torch.bool, device=w.device)
    removed[keep] = False
    if not bool(removed.any()):
        return w.new_zeros((out_ch, blocks_per_group, kh, kw), dtype=FUSE_DTYPE)
    # Only the removed columns are converted to float64: usually a small part of the kernel.
    index = removed.nonzero().flatten()
    taken = _columns(w, groups, index, blocks).to(FUSE_DTYPE)
    a = constants.detach().to(FUSE_DTYPE)[index].view(groups, 1, blocks_per_group, -1, 1, 1)
    return (taken * a).sum(dim=3).reshape(out_ch, blocks_per_group, kh, kw)


def effective_norms(
    weight: Tensor,
    groups: int = 1,
    keep: Tensor | None = None,
    constants: Tensor | None = None,
    blocks: int = 1,
) -> Tensor:
    """filter_norms(prune_inputs(weight, groups, keep, constants, blocks)) without building the
    pruned weight (float64; exactly 0 iff that filter is all zeros)."""
    if keep is None:
        return filter_norms(weight)
    w = weight.detach()
    taps = w.flatten(2) if w.dim() > 2 else w.unsqueeze(2)
    squares = torch.linalg.vector_norm(taps, dim=2, dtype=FUSE_DTYPE).square()
    total = prune_inputs(squares, groups, keep, None, blocks).sum(dim=1)
    if constants is not None:
        carrier = carrier_kernels(w, groups, keep, constants, blocks)
        total = total + carrier.flatten(1).square().sum(dim=1)
    return total.sqrt()


def fold_into_bias(
    weight: Tensor, groups: int, bias: Tensor, keep: Tensor, constants: Tensor
) -> Tensor:
    """bias + sum_{c removed} a_c * sum_taps K[:, c], float64: exact only if the consumer never
    reads padding (padding 0, 1x1, or global pooling into a linear layer)."""
    w = weight.detach().to(FUSE_DTYPE)
    taps = w.flatten(2).sum(dim=2) if w.dim() > 2 else w
    out_ch, per_group = taps.shape
    a = _removed_constants(constants, keep).view(groups, 1, per_group)
    offset = (taps.view(groups, out_ch // groups, per_group) * a).sum(dim=2).reshape(out_ch)
    return bias.detach().to(FUSE_DTYPE) + offset


def prune_outputs(
    weight: Tensor,
    bias: Tensor,
    lower: Tensor,
    upper: Tensor,
    keep: Tensor,
    blocks: int = 1,
    carriers: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The producer's (weight, bias, lower, upper) on the kept output channels (weight in its
    dtype, the rest float64); with `carriers` each block's kept rows are followed by a carrier
    row (zero filter, bias 1, clamp bounds that pass 1: the kept channels' common bounds when
    they do, else [1, 1])."""
    local = _block_local(keep, weight.shape[0], blocks)
    keep = keep.to(torch.long).flatten()
    lo, hi = lower.to(FUSE_DTYPE)[keep], upper.to(FUSE_DTYPE)[keep]
    # Reusing the kept channels' bounds keeps the layer a plain ReLU/ReLU6/Identity when possible.
    uniform = bool((lo == lo[0]).all() and (hi == hi[0]).all())
    passes_one = uniform and float(lo[0]) <= 1.0 <= float(hi[0])
    carrier_bounds = (float(lo[0]), float(hi[0])) if passes_one else (1.0, 1.0)

    def take(t: Tensor, fill: float) -> Tensor:
        t = t.detach() if t is weight else t.detach().to(FUSE_DTYPE)
        kept = t[keep].view(blocks, local.shape[1], *t.shape[1:])
        if carriers:
            extra = kept.new_full((blocks, 1, *t.shape[1:]), fill)
            kept = torch.cat([kept, extra], dim=1)
        return kept.flatten(0, 1)

    return (
        take(weight, 0.0),
        take(bias, 1.0),
        take(lower, carrier_bounds[0]),
        take(upper, carrier_bounds[1]),
    )
