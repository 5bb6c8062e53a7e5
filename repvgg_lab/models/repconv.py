"""The general re-parameterizable conv: any kernel size, stride, padding, dilation and groups,
trained as a sum of parallel branches and fused into one conv with bias.

Branch kinds are listed in `repvgg_lab.models.geometry` (names in the state dict: `_MODULE`).
Two layouts (`mode`):
- "offline" (RepVGG, ACNet, DBB): every branch ends in its own BN, and the block's output is the
  sum of the branch outputs. The map between the two stages of a DBB branch is padded with its
  BN's shift, not zeros, so the fused conv is exact at the border too.
- "online" (OREPA): branches without BN, each with a learnable per-channel scale, summed into one
  kernel in every forward; one conv, then the block's one BN (`repvgg_lab.models.online`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair
from torch.utils.checkpoint import checkpoint

from repvgg_lab.models.geometry import (
    BRANCH_SETS,
    KINDS,
    Geometry,
    branch_kinds,
    branch_problem,
    numeric_padding,
    padding_numbers,
    usable_branches,
)
from repvgg_lab.models.layers import ConvBN, PoolBN, TwoStage, new_conv
from repvgg_lab.models.online import check_mode, initial_scale, online_branch
from repvgg_lab.reparam import FUSE_DTYPE, BNStats
from repvgg_lab.reparam.fuse import Term, bn_term, fuse

# Re-exported: the vocabulary callers used to import from here.
__all__ = [
    "BRANCH_SETS",
    "KINDS",
    "Geometry",
    "RepConv",
    "branch_kinds",
    "branch_problem",
    "numeric_padding",
    "padding_numbers",
    "usable_branches",
]

_MODULE = {
    "kxk": "conv_kxk",
    "1x1": "conv_1x1",
    "1xk": "conv_1xk",
    "kx1": "conv_kx1",
    "identity": "identity",
    "1x1_kxk": "conv_1x1_kxk",
    "1x1_avg": "conv_1x1_avg",
    "avg": "avg",
}


def _numeric_padding(
    padding: str | int | tuple[int, int] | None,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int]:
    """RepConv's `padding` as numbers: None is 'same' for odd kernels; "same" and "valid" as in
    nn.Conv2d (ValueError where 'same' is impossible)."""
    if padding is None:
        return tuple(x * (y - 1) // 2 for x, y in zip(dilation, kernel, strict=True))
    pad = padding_numbers(padding, kernel, dilation)
    if pad is None or (padding == "same" and stride != (1, 1)):
        raise ValueError(
            f"padding='same' needs stride 1 and an even dilation * (kernel - 1) "
            f"(kernel {kernel}, dilation {dilation}, stride {stride})"
        )
    return pad


class RepConv(nn.Module):
    """A conv of any geometry trained as the sum of parallel linear branches (see the module
    docstring) and fused, after training, into one conv with bias (`deploy=True` builds that form
    directly). `branches` is a set name ("repvgg", "acb", "dbb": kinds the geometry does not allow
    are left out) or an explicit list of kinds. `padding` None means 'same' for odd kernels;
    "same" and "valid" work as in nn.Conv2d (the plain conv gets their numbers).

    `mode` is "offline" (a BN per branch) or "online" (scaled branches, one BN: OREPA);
    `init_scales` ("orepa" or "keep", see `repvgg_lab.models.online`) starts the online scales;
    `inner_channels` is the width inside a 1x1 -> kxk branch (default: DBB's).

    Subclasses rename branch modules through `NAMES` (a kind -> attribute name map) and make
    `conv_kxk` a ModuleList even for one kxk branch with `KXK_LIST`, to match other code's
    state dicts; `OWN_BN = False` leaves an online block's BN to the net around it."""

    NAMES: dict[str, str] = _MODULE
    KXK_LIST = False
    OWN_BN = True
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
        mode: str = "offline",
        init_scales: str = "orepa",
        inner_channels: int | None = None,
    ) -> None:
        super().__init__()
        check_mode(mode, init_scales)
        k, d, s = _pair(kernel_size), _pair(dilation), _pair(stride)
        pad = _numeric_padding(padding, k, s, d)
        self.geometry = Geometry(in_channels, out_channels, k, s, pad, d, groups)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, pad
        self.dilation, self.groups = dilation, groups
        self.branches, _ = usable_branches(branches, self.geometry)
        self.deploy, self.mode = deploy, mode
        self.init_scales, self.inner_channels = init_scales, inner_channels
        if deploy:
            self.reparam_conv = nn.Conv2d(in_channels, out_channels, k, s, pad, d, groups)
        else:
            self._build_branches()

    @property
    def online(self) -> bool:
        """Whether the train form is online (scaled branches summed into one kernel)."""
        return self.mode == "online"

    def _branch(self, kind: str, first_kxk: bool) -> nn.Module:
        """A new train-form module of branch `kind` (`first_kxk`: the block's first kxk)."""
        g = self.geometry
        if self.online:
            value = initial_scale(kind, self.init_scales, first_kxk)
            return online_branch(kind, g, value, self.inner_channels)
        if kind == "identity":
            return nn.BatchNorm2d(g.out_channels)
        if kind == "avg":
            return PoolBN(g)
        if kind in ("1x1_kxk", "1x1_avg"):
            return TwoStage(g, pool=kind == "1x1_avg", inner=self.inner_channels)
        return ConvBN(
            g.in_channels,
            g.out_channels,
            g.sub_kernel(kind),
            g.stride,
            g.groups,
            padding=g.branch_padding(kind),
            dilation=g.dilation,
        )

    def _build_branches(self) -> None:
        """Create the train-form branch modules (and an online block's BN)."""
        for kind in dict.fromkeys(self.branches):
            count = self.branches.count(kind)
            parts = [self._branch(kind, kind == "kxk" and i == 0) for i in range(count)]
            listed = count > 1 or (kind == "kxk" and self.KXK_LIST)
            setattr(self, self.NAMES[kind], nn.ModuleList(parts) if listed else parts[0])
        if self.online and self.OWN_BN:
            self.bn = nn.BatchNorm2d(self.geometry.out_channels)

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
        if self.deploy:
            return self.reparam_conv(x)
        return self._online_forward(x) if self.online else self._branch_sum(x)

    def online_kernel(self) -> Tensor:
        """The kernel an online block's forward uses: the scaled branches summed in the block's
        dtype (differentiable); conversion builds the same sum in float64.

        Under autograd the sum is recomputed in backward instead of keeping its intermediate
        kernels (composed 1x1 -> kxk and pooling kernels): a step then stores one kernel per
        conv beyond the plain net's activations, and the recomputation is kernel-sized work."""
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return checkpoint(self._summed_kernel, use_reentrant=False)
        return self._summed_kernel()

    def _summed_kernel(self) -> Tensor:
        """The online branches summed into one kernel, in the block's dtype."""
        dtype = next(self.parameters()).dtype
        return fuse(self._terms(dtype), self._shape, dtype=dtype, work=dtype)[0]

    def _online_conv(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """One conv of `x` with `online_kernel` (plus `bias`)."""
        g = self.geometry
        return F.conv2d(x, self.online_kernel(), bias, g.stride, g.padding, g.dilation, g.groups)

    def _online_forward(self, x: Tensor) -> Tensor:
        """Online train-form output: the one conv, then the block's one BN."""
        return self.bn(self._online_conv(x))

    def _terms(self, work: torch.dtype = FUSE_DTYPE) -> list[Term]:
        """The branches as fusion terms, in the frame of the kernel (online terms build their
        fixed kernels in `work`)."""
        g, terms = self.geometry, []
        for kind, module in self.branch_modules():
            offset = g.offset(kind)  # (0, 0) for the full-size kinds
            if self.online:
                terms.append(module.term(offset, work))
            elif kind == "identity":
                terms.append(bn_term(None, BNStats.of(module), offset))
            else:
                terms.append(module.term(offset))
        return terms

    def _post(self) -> tuple[Tensor | None, Tensor | None]:
        """Per-channel (scale, shift) applied to the branch sum before any activation: an online
        block's BN (float64)."""
        if self.online and self.OWN_BN:
            return BNStats.of(self.bn).scale_shift()
        return None, None

    @property
    def _shape(self) -> tuple[int, int, int, int]:
        return self.geometry.shape

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
        own_bn = ["bn"] if self.online and self.OWN_BN else []
        names = [self.NAMES[k] for k in dict.fromkeys(self.branches)]
        return names + own_bn + list(self.EXTRA_TRAIN)

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
            f"branches={'+'.join(self.branches)}, mode={self.mode}, deploy={self.deploy}"
        )
