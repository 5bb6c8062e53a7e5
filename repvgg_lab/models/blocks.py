"""RepVGG building blocks: conv+BN branch, squeeze-excitation, and the re-parameterizable block."""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from repvgg_lab.reparam import BNStats, repvgg_kernel_bias


class ConvBN(nn.Sequential):
    """Bias-free conv followed by BatchNorm (state-dict keys `conv.*`, `bn.*`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        super().__init__(OrderedDict(conv=conv, bn=nn.BatchNorm2d(out_channels)))


class SqueezeExcite(nn.Module):
    """Channel attention: x * sigmoid(fc2(relu(fc1(mean(x))))), with 1x1 convs as the FCs."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


def new_conv(
    like: nn.Conv2d | Tensor,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int = 0,
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
        groups=groups,
        bias=bias,
        device=ref.device,
        dtype=ref.dtype,
    )


class RepVGGBlock(nn.Module):
    """act(attn(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x))) for training; act(attn(conv3x3(x) + b))
    after re-parameterization (`deploy=True`). The identity BN exists only when in == out and
    stride == 1. With `gate=True` a learnable per-channel factor (`gate`, initialised to 1)
    multiplies the branch sum before attn/act; it folds into the fused kernel *and* bias, so a
    gate of exactly 0 makes the channel dead (act(0) = 0) in the plain net."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        groups: int = 1,
        *,
        se: bool = False,
        deploy: bool = False,
        gate: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.groups = stride, groups
        self.deploy = deploy
        if deploy:
            self.reparam_conv = nn.Conv2d(
                in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=True
            )
        else:
            self.conv_kxk = ConvBN(in_channels, out_channels, 3, stride, groups)
            self.conv_1x1 = ConvBN(in_channels, out_channels, 1, stride, groups)
            has_identity = in_channels == out_channels and stride == 1
            self.identity = nn.BatchNorm2d(out_channels) if has_identity else None
        # The deploy form has the gate folded into reparam_conv already, so it has no parameter.
        self.gate = nn.Parameter(torch.ones(out_channels)) if gate and not deploy else None
        self.attn = SqueezeExcite(out_channels) if se else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            y = self.reparam_conv(x)
        else:
            y = self.conv_kxk(x) + self.conv_1x1(x)
            if self.identity is not None:
                y = y + self.identity(x)
            if self.gate is not None:
                y = y * self.gate.view(1, -1, 1, 1)
        return self.act(self.attn(y))

    def get_equivalent_kernel_bias(self, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """(kernel, bias) of the single conv equivalent to the three branches.

        Reads BN running statistics whatever the module's mode; computed in float64 and rounded
        once to `dtype` (default: the block's dtype); differentiable under autograd."""
        if self.deploy:
            return self.reparam_conv.weight, self.reparam_conv.bias
        return repvgg_kernel_bias(
            self.conv_kxk.conv.weight,
            BNStats.of(self.conv_kxk.bn),
            self.conv_1x1.conv.weight,
            BNStats.of(self.conv_1x1.bn),
            BNStats.of(self.identity) if self.identity is not None else None,
            dtype=dtype,
            scale=self.gate,
        )

    def _fused_conv(self) -> nn.Conv2d:
        source = self.conv_kxk.conv
        conv = new_conv(
            source,
            self.in_channels,
            self.out_channels,
            3,
            stride=self.stride,
            padding=1,
            groups=self.groups,
        )
        with torch.no_grad():
            repvgg_kernel_bias(
                source.weight,
                BNStats.of(self.conv_kxk.bn),
                self.conv_1x1.conv.weight,
                BNStats.of(self.conv_1x1.bn),
                BNStats.of(self.identity) if self.identity is not None else None,
                out=(conv.weight, conv.bias),
                scale=self.gate,
            )
        return conv

    def to_plain(self) -> RepVGGBlock:
        """A new deploy-form block computing the same function; this block is left untouched."""
        if self.deploy:
            return copy.deepcopy(self)
        plain = RepVGGBlock.__new__(RepVGGBlock)
        nn.Module.__init__(plain)
        plain.in_channels, plain.out_channels = self.in_channels, self.out_channels
        plain.stride, plain.groups, plain.deploy = self.stride, self.groups, True
        plain.reparam_conv = self._fused_conv()
        plain.gate = None
        plain.attn = copy.deepcopy(self.attn)
        plain.act = copy.deepcopy(self.act)
        plain.train(self.training)
        return plain

    def reparameterize(self) -> None:
        """Switch this block to its deploy form in place (the timm / official-code verb)."""
        if self.deploy:
            return
        self.reparam_conv = self._fused_conv()
        del self.conv_kxk, self.conv_1x1, self.identity, self.gate
        self.gate = None
        self.deploy = True

    switch_to_deploy = reparameterize

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
            f"groups={self.groups}, deploy={self.deploy}"
            + (", gate=True" if self.gate is not None else "")
        )
