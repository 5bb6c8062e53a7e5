"""RepVGG building blocks: conv+BN branch, squeeze-excitation, and the re-parameterizable
blocks (RepVGG's and QARepVGG's, which share one deploy form)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from repvgg_lab.models.layers import ConvBN
from repvgg_lab.models.repconv import RepConv
from repvgg_lab.reparam import BNStats, qarepvgg_kernel_bias


class SqueezeExcite(nn.Module):
    """Channel attention: x * sigmoid(fc2(relu(fc1(mean(x))))), with 1x1 convs as the FCs;
    `hidden` (default channels // reduction) is the width between them."""

    def __init__(self, channels: int, reduction: int = 16, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class RepVGGBlock(RepConv):
    """act(attn(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x))) for training; act(attn(conv3x3(x) + b))
    after re-parameterization (`deploy=True`): the general `RepConv` with the "repvgg" branch set
    (the identity BN exists only when in == out and stride == 1), plus squeeze-excitation and ReLU.
    With `gate=True` a learnable per-channel factor (`gate`, initialised to 1)
    multiplies the branch sum before attn/act; it folds into the fused kernel *and* bias, so a
    gate of exactly 0 makes the channel dead (act(0) = 0) in the plain net.
    `mode="online"` trains the three branches as OREPA does: scaled kernels summed into one 3x3
    kernel, one conv, one BN (`bn`); the deploy form is the same."""

    EXTRA_TRAIN = ("gate",)

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
        mode: str = "offline",
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            3,
            stride,
            1,
            1,
            groups,
            branches="repvgg",
            deploy=deploy,
            mode=mode,
        )
        if not deploy and not self.has_identity:
            self.identity = None
        # The deploy form has the gate folded into reparam_conv already, so it has no parameter.
        self.gate = nn.Parameter(torch.ones(out_channels)) if gate and not deploy else None
        self.attn = SqueezeExcite(out_channels) if se else nn.Identity()
        self.act = nn.ReLU()

    @property
    def has_identity(self) -> bool:
        """Whether the train form has an identity branch (in == out and stride 1)."""
        return self.in_channels == self.out_channels and self.stride == 1

    def _post(self) -> tuple[Tensor | None, Tensor | None]:
        """The online BN (if any), then the gate (if any), as one per-channel scale and shift."""
        scale, shift = super()._post()
        if self.gate is None:
            return scale, shift
        if scale is None:
            return self.gate, None
        gate = self.gate.to(scale.dtype)
        return gate * scale, gate * shift

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        if self.gate is not None:
            y = y * self.gate.view(1, -1, 1, 1)
        return self.act(self.attn(y))

    def _on_plain(self) -> None:
        self.gate = None

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
            f"groups={self.groups}, deploy={self.deploy}"
            + (", gate=True" if self.gate is not None else "")
            + (", mode=online" if self.online else "")
        )


class QARepVGGBlock(RepVGGBlock):
    """QARepVGG (Chu et al., AAAI 2024): act(attn(BN(BN3(conv3x3(x)) + conv1x1(x) + x))) for
    training, the same deploy form as `RepVGGBlock`. Without BN on the 1x1 and identity
    branches (the paper's analysis) the branch sum's variance stays bounded and the fused kernel
    gets no large centre taps from an identity BN's gamma / sqrt(var + eps), which is what
    breaks per-tensor int8 ranges for RepVGG.

    The gate multiplies the *normalised* sum: before the BN, training-mode batch statistics
    would divide the gate's scale right back out and it could never switch a channel off."""

    EXTRA_TRAIN = ("bn", "gate")

    def _build_branches(self) -> None:
        """Create the train-form branches: kxk conv + BN, plain 1x1 conv, identity, sum BN."""
        if self.online:
            raise ValueError("QARepVGG has no online form (its branches already share one BN)")
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
