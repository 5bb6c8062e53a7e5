"""The MobileOne family (Vasu et al., CVPR 2023), S0-S4: a MobileNet-style stack of depthwise kxk
and pointwise 1x1 convs, each trained as several parallel conv + BN branches (plus a 1x1 "scale"
branch on the depthwise convs and an identity BN where shapes allow) and fused into one conv.

Module names are those of timm's `mobileone_s*` nets, so their state dicts, train form and
re-parameterized form alike, load strictly into these models."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from repvgg_lab.models.blocks import SqueezeExcite
from repvgg_lab.models.repconv import RepConv
from repvgg_lab.models.repvgg import BASE_WIDTHS, Head

# Squeeze-excitation width: channels / 16, rounded to the nearest multiple of 8 (at least 8).
SE_REDUCTION, SE_DIVISOR = 16, 8


def se_width(channels: int) -> int:
    """Hidden width of a MobileOne squeeze-excitation over `channels` channels."""
    rounded = int(channels / SE_REDUCTION + SE_DIVISOR / 2) // SE_DIVISOR * SE_DIVISOR
    return max(SE_DIVISOR, rounded)


def block_branches(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, num_conv_branches: int
) -> list[str]:
    """The branch kinds of one MobileOne block: `num_conv_branches` kxk convs, the 1x1 scale
    branch when the kernel is larger than 1x1, the identity BN when in == out and stride is 1."""
    branches = ["kxk"] * num_conv_branches
    if kernel_size > 1:
        branches.append("1x1")
    if in_channels == out_channels and stride == 1:
        branches.append("identity")
    return branches


class MobileOneBlock(RepConv):
    """act(attn(sum of the branches)) for training (see `block_branches`; the 1x1 branch is
    named `conv_scale` and `conv_kxk` is always a list, as in timm), act(attn(conv(x) + b))
    after re-parameterization (`deploy=True`): the general `RepConv` with MobileOne's branch
    list, plus optional squeeze-excitation and ReLU. Padding is 'same' (kernel // 2)."""

    NAMES = {**RepConv.NAMES, "1x1": "conv_scale"}
    KXK_LIST = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        *,
        num_conv_branches: int = 1,
        se: bool = False,
        deploy: bool = False,
    ) -> None:
        branches = block_branches(in_channels, out_channels, kernel_size, stride, num_conv_branches)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            groups=groups,
            branches=branches,
            deploy=deploy,
        )
        self.num_conv_branches = num_conv_branches
        hidden = se_width(out_channels)
        self.attn = SqueezeExcite(out_channels, hidden=hidden) if se else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.attn(super().forward(x)))


@dataclass(frozen=True)
class MobileOneConfig:
    """Width multipliers of the four stages (of 64, 128, 256, 512 channels), parallel kxk
    branches per block (the stem always has one), squeeze-excitation on the last `se_blocks`
    block pairs of each stage, and stage depths in depthwise + pointwise pairs."""

    widths: tuple[float, float, float, float]
    num_conv_branches: int = 1
    se_blocks: tuple[int, int, int, int] = (0, 0, 0, 0)
    depths: tuple[int, int, int, int] = (2, 8, 10, 1)

    def build(
        self, num_classes: int = 1000, deploy: bool = False, in_channels: int = 3
    ) -> MobileOne:
        return MobileOne(self, num_classes=num_classes, deploy=deploy, in_channels=in_channels)


class MobileOne(nn.Module):
    """A 3x3 stride-2 stem block, four stages of (depthwise 3x3, pointwise 1x1) block pairs,
    each stage opening with a stride-2 depthwise block, and a pooled linear head (`head.fc`)."""

    def __init__(
        self,
        config: MobileOneConfig,
        num_classes: int = 1000,
        deploy: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.config = config
        width = min(64, int(64 * config.widths[0]))
        self.stem = MobileOneBlock(in_channels, width, 3, stride=2, deploy=deploy)
        stages = []
        for i, (base, mult) in enumerate(zip(BASE_WIDTHS, config.widths, strict=True)):
            stage, width = self._stage(i, width, int(base * mult), deploy)
            stages.append(stage)
        self.stages = nn.Sequential(*stages)
        self.num_features = width
        self.head = Head(width, num_classes)

    def _stage(
        self, index: int, width: int, out_width: int, deploy: bool
    ) -> tuple[nn.Sequential, int]:
        """Stage `index` from `width` input channels, and its output width."""
        cfg = self.config
        depth, blocks = cfg.depths[index], []
        for i in range(depth):
            kw = {
                "num_conv_branches": cfg.num_conv_branches,
                "se": i >= depth - cfg.se_blocks[index],
                "deploy": deploy,
            }
            stride = 2 if i == 0 else 1
            blocks.append(MobileOneBlock(width, width, 3, stride, groups=width, **kw))
            blocks.append(MobileOneBlock(width, out_width, 1, **kw))
            width = out_width
        return nn.Sequential(*blocks), width

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


MOBILEONE_VARIANTS: dict[str, MobileOneConfig] = {
    "mobileone_s0": MobileOneConfig((0.75, 1.0, 1.0, 2.0), num_conv_branches=4),
    "mobileone_s1": MobileOneConfig((1.5, 1.5, 2.0, 2.5)),
    "mobileone_s2": MobileOneConfig((1.5, 2.0, 2.5, 4.0)),
    "mobileone_s3": MobileOneConfig((2.0, 2.5, 3.0, 4.0)),
    "mobileone_s4": MobileOneConfig((3.0, 3.5, 3.5, 4.0), se_blocks=(0, 0, 5, 1)),
}
