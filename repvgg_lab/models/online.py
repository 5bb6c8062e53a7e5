"""Online branches (OREPA, Hu et al., CVPR 2022): branches without BN of their own, each a
linear kernel generator with a learnable per-output-channel `scale`.

In every forward pass the branches are summed into one kxk kernel (`reparam.fuse` in the model's
dtype, differentiable: the 1x1 -> kxk branch composed kernel on kernel, average pooling and the
identity as fixed kernels), and the block runs one conv followed by one BN. With no BN between a
1x1 conv and the kxk conv or pooling after it, the map between them is zero-padded like the
input, and the composition is exact at every pixel. Conversion is the same sum in float64,
rounded once, with the one BN folded in.

Each module's `term(offset, work)` is its branch as a fusion term (`reparam.fuse.Term`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from repvgg_lab.models.geometry import Geometry
from repvgg_lab.reparam import identity_kernel
from repvgg_lab.reparam.fuse import Term, average_kernel, compose

MODES = ("offline", "online")
# OREPA's initial branch scales (its paper and code, before the sqrt(gamma_init) factor): kxk
# 0.25, average pooling 0.25, 1x1 -> kxk 0.5, 1x1 1.0. OREPA has no 1xk, kx1 or identity
# branch; they start as the other small kernels, at 1.0.
OREPA_SCALES = {
    "kxk": 0.25,
    "1x1_avg": 0.25,
    "avg": 0.25,
    "1x1_kxk": 0.5,
    "1x1": 1.0,
    "1xk": 1.0,
    "kx1": 1.0,
    "identity": 1.0,
}
# "keep": the first kxk branch at 1, every other branch at 0 (the function of the kxk kernel
# alone: add_branches keeps a net's function); "orepa": OREPA_SCALES (training from scratch).
INIT_SCALES = ("keep", "orepa")


def check_mode(mode: str, init_scales: str = "keep") -> None:
    """ValueError for an unknown branch mode or initial-scale scheme."""
    if mode not in MODES:
        raise ValueError(f"unknown branch mode {mode!r}; known: {', '.join(MODES)}")
    if init_scales not in INIT_SCALES:
        raise ValueError(f"unknown init_scales {init_scales!r}; known: {', '.join(INIT_SCALES)}")


def _kernel(*shape: int) -> nn.Parameter:
    """A kernel initialised as nn.Conv2d initialises its weight (kaiming-uniform, a=sqrt(5))."""
    weight = nn.Parameter(torch.empty(shape))
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return weight


class _Scaled(nn.Module):
    """A branch's learnable per-output-channel scale, starting at `value`."""

    def __init__(self, channels: int, value: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), float(value)))


class ScaledKernel(_Scaled):
    """A kxk, 1x1, 1xk or kx1 branch: `weight` times `scale`."""

    def __init__(self, g: Geometry, size: tuple[int, int], value: float) -> None:
        super().__init__(g.out_channels, value)
        self.weight = _kernel(g.out_channels, g.in_channels // g.groups, *size)

    def term(self, offset: tuple[int, int], work: torch.dtype) -> Term:
        """This branch as a fusion term."""
        return Term(self.weight, self.scale, None, offset)

    def extra_repr(self) -> str:
        return f"weight={tuple(self.weight.shape)}"


class ScaledIdentity(_Scaled):
    """The identity branch: each channel's own input times `scale`."""

    def term(self, offset: tuple[int, int], work: torch.dtype) -> Term:
        """This branch as a fusion term."""
        return Term(None, self.scale, None, offset)


class ScaledPool(_Scaled):
    """Average pooling of the zero-padded input (padding counted) times `scale`."""

    def __init__(self, g: Geometry, value: float) -> None:
        super().__init__(g.out_channels, value)
        self.groups, self.size = g.groups, g.kernel

    def term(self, offset: tuple[int, int], work: torch.dtype) -> Term:
        """This branch as a fusion term: the pooling's fixed kernel, scaled."""
        s = self.scale
        kernel = average_kernel(s.shape[0], self.groups, self.size, dtype=work, device=s.device)
        return Term(kernel, s, None, offset)


class ScaledTwoStage(_Scaled):
    """A 1x1 conv (`weight1`), then a kxk conv (`weight2`) or kxk average pooling, times `scale`.

    The 1x1 -> kxk branch is `inner` channels wide inside (default `Geometry.inner_channels`);
    where that is the input's width, `weight1` is a change to the identity (DBB's and OREPA's
    identity-based 1x1, starting at zero)."""

    def __init__(self, g: Geometry, pool: bool, value: float, inner: int | None = None) -> None:
        super().__init__(g.out_channels, value)
        mid = g.out_channels if pool else g.inner_channels(inner)
        self.groups, self.size = g.groups, g.kernel
        self.identity_based = not pool and mid == g.in_channels
        self.weight1 = _kernel(mid, g.in_channels // g.groups, 1, 1)
        if self.identity_based:
            nn.init.zeros_(self.weight1)
        self.weight2 = None if pool else _kernel(g.out_channels, mid // g.groups, *g.kernel)

    def extra_repr(self) -> str:
        second = "avg" if self.weight2 is None else str(tuple(self.weight2.shape))
        based = ", identity-based" if self.identity_based else ""
        return f"weight1={tuple(self.weight1.shape)}{based}, then {second}"

    def first(self, work: torch.dtype) -> Tensor:
        """The 1x1 conv's kernel in `work` (the identity added where it is identity-based)."""
        w = self.weight1.to(work)
        if not self.identity_based:
            return w
        return w + identity_kernel(w.shape[0], self.groups, 1, dtype=work, device=w.device)

    def term(self, offset: tuple[int, int], work: torch.dtype) -> Term:
        """This branch as a fusion term: the two kernels composed, then scaled."""
        first = self.first(work)
        second = self.weight2
        if second is None:
            # Pooling acts on each channel alone, so the composition is `first` times the
            # pooling weight at every tap: C_out*C_in*k^2 products, not compose's dense
            # C_out*C_mid*C_in*k^2 (the same values: the dense sum only adds exact zeros).
            weight = average_kernel(1, 1, self.size, dtype=work, device=first.device)
            return Term(first * weight, self.scale, None, offset)
        return compose(
            Term(first, None, None), Term(second, self.scale, None, offset), self.groups, work=work
        )


def online_branch(kind: str, g: Geometry, value: float, inner: int | None = None) -> nn.Module:
    """The online module of one branch `kind` for a conv of geometry `g`, its scale at `value`."""
    if kind == "identity":
        return ScaledIdentity(g.out_channels, value)
    if kind == "avg":
        return ScaledPool(g, value)
    if kind in ("1x1_kxk", "1x1_avg"):
        return ScaledTwoStage(g, kind == "1x1_avg", value, inner)
    return ScaledKernel(g, g.sub_kernel(kind), value)


def initial_scale(kind: str, init_scales: str, first_kxk: bool) -> float:
    """A branch's initial scale under `init_scales` (see `INIT_SCALES`); `first_kxk` marks the
    block's first kxk branch."""
    if init_scales == "orepa":
        return OREPA_SCALES[kind]
    return 1.0 if first_kxk else 0.0
