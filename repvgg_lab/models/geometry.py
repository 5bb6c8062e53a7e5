"""A conv's geometry and which branch kinds it allows: the shared vocabulary of `RepConv`, its
online twin and `add_branches`.

Branch kinds (state-dict names in brackets, see `repvgg_lab.models.repconv`):
- "kxk"      a kxk conv, once or several times (MobileOne) [conv_kxk]
- "1x1"      a 1x1 conv at the centre tap [conv_1x1]
- "1xk"/"kx1" ACNet's horizontal / vertical kernels, centre row / column [conv_1xk, conv_kx1]
- "identity" the input itself (in == out, stride 1, output size == input size) [identity]
- "1x1_kxk"  DBB's 1x1 conv, then a kxk conv [conv_1x1_kxk]
- "1x1_avg"  DBB's 1x1 conv, then kxk average pooling (dilation 1) [conv_1x1_avg]
- "avg"      kxk average pooling of the input, zero-padded (in == out, dilation 1) [avg]

The "dbb" set is the published Diverse Branch Block: for a depthwise conv (groups == in ==
out channels, the published code's `groups == out_channels` where it runs at all) it has no 1x1
branch, pools without a 1x1 conv ("avg") and its 1x1 -> kxk branch is twice the input channels
wide inside; otherwise kxk, 1x1, 1x1 -> avg and 1x1 -> kxk with the input channels' width.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import nn
from torch.nn.modules.utils import _pair

KINDS = ("kxk", "1x1", "1xk", "kx1", "identity", "1x1_kxk", "1x1_avg", "avg")
BRANCH_SETS: dict[str, tuple[str, ...]] = {
    "repvgg": ("kxk", "1x1", "identity"),
    "acb": ("kxk", "1xk", "kx1"),
    "dbb": ("kxk", "1x1", "1x1_avg", "1x1_kxk"),
}
# The published DBB of a depthwise conv: no 1x1 branch, pooling without a 1x1 conv.
DBB_DEPTHWISE = ("kxk", "avg", "1x1_kxk")


@dataclasses.dataclass(frozen=True)
class Geometry:
    """A conv's shape: channels, kernel, stride, padding, dilation and groups (pairs as (h, w))."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @classmethod
    def of(cls, conv: nn.Conv2d) -> Geometry:
        """The geometry of an existing conv (padding must be numeric: see `numeric_padding`)."""
        padding = numeric_padding(conv)
        if padding is None:
            raise ValueError(f"padding {conv.padding!r} is not symmetric")
        return cls(
            conv.in_channels,
            conv.out_channels,
            _pair(conv.kernel_size),
            _pair(conv.stride),
            padding,
            _pair(conv.dilation),
            conv.groups,
        )

    @property
    def depthwise(self) -> bool:
        """One input and one output channel per group (groups == in == out channels)."""
        return self.groups == self.in_channels == self.out_channels

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The conv's kernel shape (out, in / groups, kh, kw)."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel)

    def sub_kernel(self, kind: str) -> tuple[int, int]:
        """Kernel size of a branch kind's own conv (kxk for the composite kinds)."""
        kh, kw = self.kernel
        return {"1x1": (1, 1), "1xk": (1, kw), "kx1": (kh, 1), "identity": (1, 1)}.get(
            kind, (kh, kw)
        )

    def branch_padding(self, kind: str) -> tuple[int, int]:
        """Padding of a branch's own conv so that its taps line up with the frame's centre."""
        sub = self.sub_kernel(kind)
        return tuple(
            p - d * ((k - s) // 2)
            for p, d, k, s in zip(self.padding, self.dilation, self.kernel, sub, strict=True)
        )

    def offset(self, kind: str) -> tuple[int, int]:
        """Frame tap where the branch's tap (0, 0) lands: centred, which `branch_padding` makes
        the branch's conv read (`branch_problem` rejects kinds that cannot be centred)."""
        sub = self.sub_kernel(kind)
        return tuple((k - s) // 2 for k, s in zip(self.kernel, sub, strict=True))

    def inner_channels(self, requested: int | None = None) -> int:
        """Width inside the 1x1 -> kxk branch: `requested`, or the published default (twice the
        input channels for a depthwise conv, the input channels otherwise)."""
        width = requested or (2 * self.in_channels if self.depthwise else self.in_channels)
        if width < 1 or width % self.groups:
            raise ValueError(
                f"inner width {width} of the 1x1_kxk branch is not a positive multiple of "
                f"groups={self.groups}"
            )
        return width


def numeric_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """A conv's padding as (h, w) integers ("valid" is 0; "same" where it is symmetric)."""
    return padding_numbers(conv.padding, conv.kernel_size, conv.dilation)


def padding_numbers(
    padding: str | int | tuple[int, int],
    kernel_size: int | tuple[int, int],
    dilation: int | tuple[int, int] = 1,
) -> tuple[int, int] | None:
    """`padding` as (h, w) integers: "valid" is 0, "same" is dilation * (k - 1) / 2 where that is
    symmetric (None where it is not, e.g. an even kernel)."""
    if not isinstance(padding, str):
        return _pair(padding)
    if padding not in ("same", "valid"):
        raise ValueError(f"padding {padding!r}: a string padding is 'same' or 'valid'")
    if padding == "valid":
        return (0, 0)
    totals = [d * (k - 1) for d, k in zip(_pair(dilation), _pair(kernel_size), strict=True)]
    return None if any(t % 2 for t in totals) else tuple(t // 2 for t in totals)


def _pool_problem(kind: str, g: Geometry) -> str | None:
    """Why average pooling (after a 1x1 conv, or of the input for "avg") does not fit `g`."""
    if g.kernel == (1, 1):
        return "1x1 average pooling is the identity"
    if g.dilation != (1, 1):
        return "average pooling has no dilation"
    if kind == "avg" and g.in_channels != g.out_channels:
        return "average pooling without a 1x1 conv needs in == out channels"
    return None


def branch_problem(kind: str, g: Geometry) -> str | None:
    """Why branch `kind` cannot be part of a conv of geometry `g` (None when it can)."""
    if kind not in KINDS:
        return f"unknown branch {kind!r} (known: {', '.join(KINDS)})"
    if kind in ("kxk", "1x1_kxk"):
        return None
    if kind in ("1x1_avg", "avg"):
        return _pool_problem(kind, g)
    sub = g.sub_kernel(kind)
    if kind in ("1x1", "1xk", "kx1") and sub == g.kernel:
        return f"a {kind} branch duplicates the {g.kernel[0]}x{g.kernel[1]} kernel"
    for k, s in zip(g.kernel, sub, strict=True):
        if (k - s) % 2:
            return f"a {kind} branch has no centre in a {g.kernel[0]}x{g.kernel[1]} kernel"
    if min(g.branch_padding(kind)) < 0:
        return f"padding {g.padding} is too small to centre a {kind} branch"
    if kind == "identity":
        if g.in_channels != g.out_channels or g.stride != (1, 1):
            return "identity needs in == out channels and stride 1"
        if g.branch_padding(kind) != (0, 0):
            return f"identity needs 'same' padding (got {g.padding})"
    return None


def branch_kinds(branches: str | Sequence[str], g: Geometry | None = None) -> tuple[str, ...]:
    """The kinds of a branch set name or an explicit list (ValueError for unknown names); with
    `g`, "dbb" is the published block of that geometry (`DBB_DEPTHWISE` for a depthwise conv)."""
    if isinstance(branches, str):
        if branches not in BRANCH_SETS:
            raise ValueError(
                f"unknown branch set {branches!r}; known: {', '.join(BRANCH_SETS)}, "
                f"or a list of {', '.join(KINDS)}"
            )
        if branches == "dbb" and g is not None and g.depthwise:
            return DBB_DEPTHWISE
        return BRANCH_SETS[branches]
    unknown = [k for k in branches if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown branch {unknown[0]!r}; known: {', '.join(KINDS)}")
    return tuple(branches)


def usable_branches(
    branches: str | Sequence[str], g: Geometry, *, strict: bool | None = None
) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
    """(kinds kept, [(kind, why dropped)]) for a branch set name or an explicit list of kinds.

    A named set keeps the kinds the geometry allows; an explicit list must be usable as given
    unless `strict=False` ("kxk" may repeat: MobileOne's parallel kxk branches)."""
    named = branch_kinds(branches, g)
    dropped = [(k, why) for k in dict.fromkeys(named) if (why := branch_problem(k, g))]
    if strict is None:
        strict = not isinstance(branches, str)
    if dropped and strict:
        raise ValueError(f"branch {dropped[0][0]!r} cannot be used here: {dropped[0][1]}")
    extra = [k for k in named if k != "kxk" and named.count(k) > 1]
    if extra:
        raise ValueError(f"branch {extra[0]!r} is listed twice (only 'kxk' may repeat)")
    skip = {k for k, _ in dropped}
    kept = tuple(k for k in named if k not in skip)
    if not kept:
        raise ValueError("a re-parameterizable conv needs at least one branch")
    return kept, dropped
