"""Branch modules of re-parameterizable convs: conv + BN, the BN padded with its shift, and DBB's
two-stage branch; each reports itself as a fusion term."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair
from torch.nn.utils import skip_init

from repvgg_lab.reparam import FUSE_DTYPE, BNStats, identity_kernel
from repvgg_lab.reparam.fuse import Term, average_kernel, bn_term, compose

if TYPE_CHECKING:
    from repvgg_lab.models.repconv import Geometry


def new_conv(
    like: nn.Conv2d | Tensor,
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    *,
    stride: int | tuple[int, int] = 1,
    padding: str | int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    bias: bool = True,
) -> nn.Conv2d:
    """An uninitialised Conv2d on the dtype/device of `like` (random init would be wasted work)."""
    ref = like.weight if isinstance(like, nn.Conv2d) else like
    return skip_init(
        nn.Conv2d,
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=bias,
        device=ref.device,
        dtype=ref.dtype,
    )


def stem_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """`conv` rebuilt for `in_channels` inputs (same everything else, on its device and dtype),
    kaiming-initialised as torchvision initialises its convs: a stem for grey or extra inputs."""
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=1,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


class ConvBN(nn.Sequential):
    """Bias-free conv followed by BatchNorm (state-dict keys `conv.*`, `bn.*`); padding defaults
    to 'same' for odd kernels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        groups: int = 1,
        *,
        padding: int | tuple[int, int] | None = None,
        dilation: int | tuple[int, int] = 1,
    ) -> None:
        if padding is None:
            padding = tuple(k // 2 for k in _pair(kernel_size))
        conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=False,
        )
        super().__init__(OrderedDict(conv=conv, bn=nn.BatchNorm2d(out_channels)))

    def term(self, offset: tuple[int, int] = (0, 0)) -> Term:
        """This branch as a fusion term."""
        return bn_term(self.conv.weight, BNStats.of(self.bn), offset, self.conv.bias)


class PadBN(nn.BatchNorm2d):
    """BatchNorm whose output is padded with the value BN gives a zero input (its eval shift),
    so a following unpadded conv or pooling sees what it would see after the BN of a zero-padded
    input: the two-stage branch is then one conv at every pixel."""

    def __init__(self, channels: int, padding: tuple[int, int]) -> None:
        super().__init__(channels)
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        ph, pw = self.padding
        if not (ph or pw):
            return y
        with torch.no_grad():
            value = BNStats.of(self).scale_shift()[1].to(y.dtype)
        n, c, h, w = y.shape
        out = value.view(1, c, 1, 1).expand(n, c, h + 2 * ph, w + 2 * pw).clone()
        out[:, :, ph : ph + h, pw : pw + w] = y
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, padding={self.padding}"


class IdentityConv1x1(nn.Conv2d):
    """DBB's identity-based 1x1 conv (in == out channels): the kernel is the identity plus the
    learned `weight`, which starts at zero, so weight decay pulls the conv towards the identity."""

    def __init__(self, channels: int, groups: int = 1) -> None:
        super().__init__(channels, channels, 1, groups=groups, bias=False)
        nn.init.zeros_(self.weight)

    def kernel(self, dtype: torch.dtype | None = None) -> Tensor:
        """The conv's actual kernel, identity + weight, computed in `dtype` (default: the
        weight's; float64 for a conversion, so the sum is not rounded first)."""
        w = self.weight.to(dtype or self.weight.dtype)
        return w + identity_kernel(w.shape[0], self.groups, 1, dtype=w.dtype, device=w.device)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.kernel(), None)


def first_kernel(conv: nn.Conv2d) -> Tensor:
    """The kernel a two-stage branch's first conv applies (identity-based or plain), for a
    float64 fusion."""
    return conv.kernel(FUSE_DTYPE) if isinstance(conv, IdentityConv1x1) else conv.weight


class TwoStage(nn.Module):
    """DBB's two-stage branch: 1x1 conv + PadBN, then a kxk conv (or kxk average pooling) + BN.

    The 1x1 -> kxk branch is `inner` channels wide inside (default: `Geometry.inner_channels`);
    its first conv is identity-based where that width is the input's (`IdentityConv1x1`)."""

    def __init__(self, g: Geometry, pool: bool, inner: int | None = None) -> None:
        super().__init__()
        mid = g.out_channels if pool else g.inner_channels(inner)
        if not pool and mid == g.in_channels:
            self.conv1 = IdentityConv1x1(mid, g.groups)
        else:
            self.conv1 = nn.Conv2d(g.in_channels, mid, 1, groups=g.groups, bias=False)
        self.bn1 = PadBN(mid, g.padding)
        if pool:
            self.pool = nn.AvgPool2d(g.kernel, g.stride, padding=0)
        else:
            self.conv2 = nn.Conv2d(
                mid, g.out_channels, g.kernel, g.stride, 0, g.dilation, g.groups, bias=False
            )
        self.bn2 = nn.BatchNorm2d(g.out_channels)
        self.groups = g.groups

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn1(self.conv1(x))
        return self.bn2(self.pool(y) if hasattr(self, "pool") else self.conv2(y))

    def term(self, offset: tuple[int, int] = (0, 0)) -> Term:
        """This branch as a fusion term (composed at every pixel: `compose`)."""
        first = bn_term(first_kernel(self.conv1), BNStats.of(self.bn1))
        if hasattr(self, "pool"):
            ref = self.conv1.weight
            size = _pair(self.pool.kernel_size)
            second = average_kernel(ref.shape[0], self.groups, size, device=ref.device)
        else:
            second = self.conv2.weight
        return compose(first, bn_term(second, BNStats.of(self.bn2), offset), self.groups)


class PoolBN(nn.Module):
    """DBB's pooling branch of a depthwise conv: kxk average pooling of the zero-padded input
    (padding counted, as a conv sees it), then BN."""

    def __init__(self, g: Geometry) -> None:
        super().__init__()
        self.padding = g.padding
        self.pool = nn.AvgPool2d(g.kernel, g.stride, padding=0)
        self.bn = nn.BatchNorm2d(g.out_channels)
        self.groups = g.groups

    def forward(self, x: Tensor) -> Tensor:
        ph, pw = self.padding
        return self.bn(self.pool(F.pad(x, (pw, pw, ph, ph)) if ph or pw else x))

    def term(self, offset: tuple[int, int] = (0, 0)) -> Term:
        """This branch as a fusion term: the pooling's kernel, then the BN."""
        ref = self.bn.running_mean
        size = _pair(self.pool.kernel_size)
        kernel = average_kernel(ref.shape[0], self.groups, size, device=ref.device)
        return bn_term(kernel, BNStats.of(self.bn), offset)
