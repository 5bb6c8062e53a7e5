"""RepVGG building blocks: conv+BN branch, squeeze-excitation, and the re-parameterizable
blocks (RepVGG's and QARepVGG's, which share one deploy form)."""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

from repvgg_lab.reparam import BNStats, qarepvgg_kernel_bias, repvgg_kernel_bias


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

    # Train-form submodules, dropped by `reparameterize` (subclasses name their own).
    BRANCHES: tuple[str, ...] = ("conv_kxk", "conv_1x1", "identity")

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
            self._build_branches()
        # The deploy form has the gate folded into reparam_conv already, so it has no parameter.
        self.gate = nn.Parameter(torch.ones(out_channels)) if gate and not deploy else None
        self.attn = SqueezeExcite(out_channels) if se else nn.Identity()
        self.act = nn.ReLU()

    @property
    def has_identity(self) -> bool:
        """Whether the train form has an identity branch (in == out and stride 1)."""
        return self.in_channels == self.out_channels and self.stride == 1

    def _build_branches(self) -> None:
        """Create the train-form branches: kxk conv + BN, 1x1 conv + BN, identity BN."""
        cin, cout, stride, groups = self.in_channels, self.out_channels, self.stride, self.groups
        self.conv_kxk = ConvBN(cin, cout, 3, stride, groups)
        self.conv_1x1 = ConvBN(cin, cout, 1, stride, groups)
        self.identity = nn.BatchNorm2d(cout) if self.has_identity else None

    def _branch_sum(self, x: Tensor) -> Tensor:
        """Train-form output before gate, attn and act."""
        y = self.conv_kxk(x) + self.conv_1x1(x)
        return y + self.identity(x) if self.identity is not None else y

    def _kernel_bias(
        self, dtype: torch.dtype | None = None, out: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """The float64 fusion of the train-form branches and gate, rounded once."""
        return repvgg_kernel_bias(
            self.conv_kxk.conv.weight,
            BNStats.of(self.conv_kxk.bn),
            self.conv_1x1.conv.weight,
            BNStats.of(self.conv_1x1.bn),
            BNStats.of(self.identity) if self.identity is not None else None,
            dtype=dtype,
            out=out,
            scale=self.gate,
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            y = self.reparam_conv(x)
        else:
            y = self._branch_sum(x)
            if self.gate is not None:
                y = y * self.gate.view(1, -1, 1, 1)
        return self.act(self.attn(y))

    def get_equivalent_kernel_bias(self, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """(kernel, bias) of the single conv equivalent to the branches (and gate).

        Reads BN running statistics whatever the module's mode; computed in float64 and rounded
        once to `dtype` (default: the block's dtype); differentiable under autograd."""
        if self.deploy:
            return self.reparam_conv.weight, self.reparam_conv.bias
        return self._kernel_bias(dtype=dtype)

    def _fused_conv(self) -> nn.Conv2d:
        conv = new_conv(
            self.conv_kxk.conv,
            self.in_channels,
            self.out_channels,
            3,
            stride=self.stride,
            padding=1,
            groups=self.groups,
        )
        with torch.no_grad():
            self._kernel_bias(out=(conv.weight, conv.bias))
        return conv

    def to_plain(self) -> RepVGGBlock:
        """A new deploy-form block computing the same function; this block is left untouched."""
        if self.deploy:
            return copy.deepcopy(self)
        cls = type(self)
        plain = cls.__new__(cls)
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
        for name in (*self.BRANCHES, "gate"):
            delattr(self, name)
        self.gate = None
        self.deploy = True

    switch_to_deploy = reparameterize

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
            f"groups={self.groups}, deploy={self.deploy}"
            + (", gate=True" if self.gate is not None else "")
        )


class QARepVGGBlock(RepVGGBlock):
    """QARepVGG (Chu et al., AAAI 2024): act(attn(BN(BN3(conv3x3(x)) + conv1x1(x) + x))) for
    training, the same deploy form as `RepVGGBlock`. Without BN on the 1x1 and identity
    branches (the paper's analysis) the branch sum's variance stays bounded and the fused kernel
    gets no large centre taps from an identity BN's gamma / sqrt(var + eps), which is what
    breaks per-tensor int8 ranges for RepVGG.

    The gate multiplies the *normalised* sum: before the BN, training-mode batch statistics
    would divide the gate's scale right back out and it could never switch a channel off."""

    BRANCHES = ("conv_kxk", "conv_1x1", "identity", "bn")

    def _build_branches(self) -> None:
        """Create the train-form branches: kxk conv + BN, plain 1x1 conv, identity, sum BN."""
        cin, cout, stride, groups = self.in_channels, self.out_channels, self.stride, self.groups
        self.conv_kxk = ConvBN(cin, cout, 3, stride, groups)
        self.conv_1x1 = nn.Conv2d(cin, cout, 1, stride=stride, groups=groups, bias=False)
        self.identity = nn.Identity() if self.has_identity else None
        self.bn = nn.BatchNorm2d(cout)

    def _branch_sum(self, x: Tensor) -> Tensor:
        """Train-form output before gate, attn and act: the BN of the branch sum."""
        y = self.conv_kxk(x) + self.conv_1x1(x)
        return self.bn(y + x if self.identity is not None else y)

    def _kernel_bias(
        self, dtype: torch.dtype | None = None, out: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """The float64 fusion of the QA branches, the sum's BN and the gate, rounded once."""
        return qarepvgg_kernel_bias(
            self.conv_kxk.conv.weight,
            BNStats.of(self.conv_kxk.bn),
            self.conv_1x1.weight,
            BNStats.of(self.bn),
            identity=self.identity is not None,
            dtype=dtype,
            out=out,
            scale=self.gate,
        )


# Block types by `RepVGGConfig.block`.
BLOCK_TYPES: dict[str, type[RepVGGBlock]] = {"repvgg": RepVGGBlock, "qa": QARepVGGBlock}
