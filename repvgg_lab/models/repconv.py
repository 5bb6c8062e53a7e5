"""The general re-parameterizable conv: any kernel size, stride, padding, dilation and groups,
trained as a sum of parallel branches and fused into one conv with bias.

Branch kinds (names in the state dict in brackets):
- "kxk"      kxk conv + BN, once or several times (MobileOne) [conv_kxk]
- "1x1"      1x1 conv + BN, at the centre tap [conv_1x1]
- "1xk"/"kx1" ACNet's horizontal / vertical kernels + BN, centre row / column [conv_1xk, conv_kx1]
- "identity" BN of the input (in == out, stride 1, output size == input size) [identity]
- "1x1_kxk"  DBB's 1x1 conv + BN, then kxk conv + BN [conv_1x1_kxk]
- "1x1_avg"  DBB's 1x1 conv + BN, then kxk average pooling + BN (dilation 1) [conv_1x1_avg]
The map between the two stages of a DBB branch is padded with its BN's shift, not zeros, so the
fused conv is exact at the border too.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from repvgg_lab.models.layers import ConvBN, TwoStage, new_conv
from repvgg_lab.reparam import BNStats
from repvgg_lab.reparam.fuse import Term, bn_term, fuse

KINDS = ("kxk", "1x1", "1xk", "kx1", "identity", "1x1_kxk", "1x1_avg")
BRANCH_SETS: dict[str, tuple[str, ...]] = {
    "repvgg": ("kxk", "1x1", "identity"),
    "acb": ("kxk", "1xk", "kx1"),
    "dbb": ("kxk", "1x1", "1x1_avg", "1x1_kxk"),
}
_MODULE = {
    "kxk": "conv_kxk",
    "1x1": "conv_1x1",
    "1xk": "conv_1xk",
    "kx1": "conv_kx1",
    "identity": "identity",
    "1x1_kxk": "conv_1x1_kxk",
    "1x1_avg": "conv_1x1_avg",
}


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


def branch_problem(kind: str, g: Geometry) -> str | None:
    """Why branch `kind` cannot be part of a conv of geometry `g` (None when it can)."""
    if kind not in KINDS:
        return f"unknown branch {kind!r} (known: {', '.join(KINDS)})"
    if kind == "kxk":
        return None
    sub = g.sub_kernel(kind)
    if kind in ("1x1", "1xk", "kx1") and sub == g.kernel:
        return f"a {kind} branch duplicates the {g.kernel[0]}x{g.kernel[1]} kernel"
    if kind == "1x1_avg":
        if g.kernel == (1, 1):
            return "1x1 average pooling is the identity"
        return "average pooling has no dilation" if g.dilation != (1, 1) else None
    if kind == "1x1_kxk":
        return None
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


def branch_kinds(branches: str | Sequence[str]) -> tuple[str, ...]:
    """The kinds of a branch set name or an explicit list (ValueError for unknown names)."""
    if isinstance(branches, str):
        if branches not in BRANCH_SETS:
            raise ValueError(
                f"unknown branch set {branches!r}; known: {', '.join(BRANCH_SETS)}, "
                f"or a list of {', '.join(KINDS)}"
            )
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
    named = branch_kinds(branches)
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


class RepConv(nn.Module):
    """A conv of any geometry trained as the sum of parallel linear branches (see the module
    docstring) and fused, after training, into one conv with bias (`deploy=True` builds that form
    directly). `branches` is a set name ("repvgg", "acb", "dbb": kinds the geometry does not allow
    are left out) or an explicit list of kinds. `padding` None means 'same' for odd kernels;
    "same" and "valid" work as in nn.Conv2d (the plain conv gets their numbers).

    Subclasses rename branch modules through `NAMES` (a kind -> attribute name map) and make
    `conv_kxk` a ModuleList even for one kxk branch with `KXK_LIST`, to match other code's
    state dicts."""

    NAMES: dict[str, str] = _MODULE
    KXK_LIST = False
    # Train-form parameters or modules outside the branches (subclasses), dropped when fused.
    EXTRA_TRAIN: tuple[str, ...] = ()

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] | None = None,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        *,
        branches: str | Sequence[str] = "repvgg",
        deploy: bool = False,
    ) -> None:
        super().__init__()
        k, d = _pair(kernel_size), _pair(dilation)
        if padding is None:
            pad = tuple(x * (y - 1) // 2 for x, y in zip(d, k, strict=True))
        else:
            pad = padding_numbers(padding, k, d)
            if pad is None or (padding == "same" and _pair(stride) != (1, 1)):
                raise ValueError(
                    f"padding='same' needs stride 1 and an even dilation * (kernel - 1) "
                    f"(kernel {k}, dilation {d}, stride {_pair(stride)})"
                )
        self.geometry = Geometry(in_channels, out_channels, k, _pair(stride), pad, d, groups)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, pad
        self.dilation, self.groups = dilation, groups
        self.branches, _ = usable_branches(branches, self.geometry)
        self.deploy = deploy
        if deploy:
            g = self.geometry
            self.reparam_conv = nn.Conv2d(
                in_channels, out_channels, k, g.stride, pad, d, groups, bias=True
            )
        else:
            self._build_branches()

    def _build_branches(self) -> None:
        """Create the train-form branch modules."""
        g = self.geometry
        for kind in dict.fromkeys(self.branches):
            if kind == "kxk":
                count = self.branches.count("kxk")
                convs = [
                    ConvBN(
                        g.in_channels,
                        g.out_channels,
                        g.kernel,
                        g.stride,
                        g.groups,
                        padding=g.padding,
                        dilation=g.dilation,
                    )
                    for _ in range(count)
                ]
                module = nn.ModuleList(convs) if count > 1 or self.KXK_LIST else convs[0]
            elif kind == "identity":
                module = nn.BatchNorm2d(g.out_channels)
            elif kind in ("1x1_kxk", "1x1_avg"):
                module = TwoStage(g, pool=kind == "1x1_avg")
            else:
                module = ConvBN(
                    g.in_channels,
                    g.out_channels,
                    g.sub_kernel(kind),
                    g.stride,
                    g.groups,
                    padding=g.branch_padding(kind),
                    dilation=g.dilation,
                )
            setattr(self, self.NAMES[kind], module)

    def branch_modules(self) -> list[tuple[str, nn.Module]]:
        """(kind, module) of every train-form branch, each parallel kxk branch on its own."""
        found = []
        for kind in dict.fromkeys(self.branches):
            module = getattr(self, self.NAMES[kind])
            parts = module if isinstance(module, nn.ModuleList) else [module]
            found.extend((kind, m) for m in parts)
        return found

    def _branch_sum(self, x: Tensor) -> Tensor:
        """Train-form output: the sum of the branches."""
        y = None
        for _, module in self.branch_modules():
            y = module(x) if y is None else y + module(x)
        return y

    def forward(self, x: Tensor) -> Tensor:
        return self.reparam_conv(x) if self.deploy else self._branch_sum(x)

    def _terms(self) -> list[Term]:
        """The branches as fusion terms, in the frame of the kernel."""
        g, terms = self.geometry, []
        for kind, module in self.branch_modules():
            offset = g.offset(kind)  # (0, 0) for the full-size kinds
            if kind == "identity":
                terms.append(bn_term(None, BNStats.of(module), offset))
            else:
                terms.append(module.term(offset))
        return terms

    def _post(self) -> tuple[Tensor | None, Tensor | None]:
        """Per-channel (scale, shift) applied to the branch sum before any activation."""
        return None, None

    @property
    def _shape(self) -> tuple[int, int, int, int]:
        g = self.geometry
        return (g.out_channels, g.in_channels // g.groups, *g.kernel)

    def _kernel_bias(
        self, dtype: torch.dtype | None = None, out: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """The float64 fusion of the train-form branches, rounded once."""
        scale, shift = self._post()
        dtype = dtype or next(self.parameters()).dtype
        return fuse(self._terms(), self._shape, scale=scale, shift=shift, dtype=dtype, out=out)

    def get_equivalent_kernel_bias(self, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """(kernel, bias) of the single conv equivalent to the branches (and any gate).

        Reads BN running statistics whatever the module's mode; computed in float64 and rounded
        once to `dtype` (default: the block's dtype); differentiable under autograd."""
        if self.deploy:
            return self.reparam_conv.weight, self.reparam_conv.bias
        return self._kernel_bias(dtype=dtype)

    def _fused_conv(self, padding: str | tuple[int, int] | None = None) -> nn.Conv2d:
        """The fused conv with bias; `padding` (default: the geometry's) may be "same"/"valid"."""
        g = self.geometry
        conv = new_conv(
            next(self.parameters()),
            g.in_channels,
            g.out_channels,
            g.kernel,
            stride=g.stride,
            padding=g.padding if padding is None else padding,
            dilation=g.dilation,
            groups=g.groups,
        )
        with torch.no_grad():
            self._kernel_bias(out=(conv.weight, conv.bias))
        return conv.train(self.training)

    def _train_names(self) -> list[str]:
        return [self.NAMES[k] for k in dict.fromkeys(self.branches)] + list(self.EXTRA_TRAIN)

    def to_plain(self) -> RepConv:
        """A new deploy-form module computing the same function; this one is left untouched."""
        if self.deploy:
            return copy.deepcopy(self)
        skip = {
            id(getattr(self, n)): None
            for n in self._train_names()
            if getattr(self, n, None) is not None
        }
        plain = copy.deepcopy(self, skip)
        for name in self._train_names():
            for table in (plain._modules, plain._parameters):
                table.pop(name, None)
            plain.__dict__.pop(name, None)
        plain.reparam_conv = self._fused_conv()
        plain.deploy = True
        plain._on_plain()
        return plain

    def _on_plain(self) -> None:
        """Hook: attributes the deploy form sets after its train-form parts are removed."""

    def reparameterize(self) -> None:
        """Switch this module to its deploy form in place (the timm / official-code verb)."""
        if self.deploy:
            return
        self.reparam_conv = self._fused_conv()
        for name in self._train_names():
            delattr(self, name)
        self.deploy = True
        self._on_plain()

    switch_to_deploy = reparameterize

    def extra_repr(self) -> str:
        g = self.geometry
        return (
            f"{g.in_channels}, {g.out_channels}, kernel={g.kernel}, stride={g.stride}, "
            f"padding={g.padding}, dilation={g.dilation}, groups={g.groups}, "
            f"branches={'+'.join(self.branches)}, deploy={self.deploy}"
        )
