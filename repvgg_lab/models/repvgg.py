"""The RepVGG family (Ding et al., CVPR 2021) and its quantization-friendly QARepVGG twin (Chu et
al., AAAI 2024): architecture as data, one model class."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

from torch import Tensor, nn

from repvgg_lab.errors import ConfigError, check_choice
from repvgg_lab.models.blocks import BLOCK_TYPES
from repvgg_lab.models.online import MODES

BASE_WIDTHS = (64, 128, 256, 512)


@dataclass(frozen=True)
class RepVGGConfig:
    """Stage depths, width multipliers (a, a, a, b), groups on odd blocks of each stage, SE,
    per-channel gates for sparsity training (see `RepVGGBlock`), the block type: "repvgg" or
    "qa" (`QARepVGGBlock`; same widths and the same deploy form), and the branch layout of the
    "repvgg" blocks: "offline" (a BN per branch) or "online" (OREPA: scaled branches summed into
    one kernel, one BN; same deploy form)."""

    depths: tuple[int, int, int, int]
    widths: tuple[float, float, float, float]
    groups: int = 1
    se: bool = False
    gate: bool = False
    block: str = "repvgg"
    branch_mode: str = "offline"

    def __post_init__(self) -> None:
        if self.block not in BLOCK_TYPES:
            raise ValueError(f"unknown block {self.block!r}; known blocks: {sorted(BLOCK_TYPES)}")
        check_choice(ConfigError, "branch_mode", self.branch_mode, MODES)
        if self.block == "qa" and self.branch_mode == "online":
            raise ConfigError("QARepVGG blocks have no online form; use branch_mode=offline")

    def build(self, num_classes: int = 1000, deploy: bool = False, in_channels: int = 3) -> RepVGG:
        return RepVGG(self, num_classes=num_classes, deploy=deploy, in_channels=in_channels)


class Head(nn.Module):
    """Global average pooling followed by a linear classifier (`head.fc`)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(x)


class RepVGG(nn.Module):
    """Stem block (stride 2), four stages each opening with a stride-2 block, pooled linear head."""

    def __init__(
        self,
        config: RepVGGConfig,
        num_classes: int = 1000,
        deploy: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.config = config
        stem_width = min(64, int(64 * config.widths[0]))
        block = functools.partial(
            BLOCK_TYPES[config.block],
            se=config.se,
            deploy=deploy,
            gate=config.gate,
            mode=config.branch_mode,
        )
        self.stem = block(in_channels, stem_width, stride=2)
        stages, width = [], stem_width
        for depth, base, mult in zip(config.depths, BASE_WIDTHS, config.widths, strict=True):
            out_width = int(base * mult)
            blocks = []
            for i in range(depth):
                # Grouped conv on every odd block of a stage (the paper's layers 2, 4, ..., 26).
                groups = config.groups if i % 2 == 1 else 1
                blocks.append(block(width, out_width, stride=2 if i == 0 else 1, groups=groups))
                width = out_width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = width
        self.head = Head(width, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def _b(widths: tuple[float, float, float, float], groups: int = 1) -> RepVGGConfig:
    return RepVGGConfig(depths=(4, 6, 16, 1), widths=widths, groups=groups)


def _a(widths: tuple[float, float, float, float]) -> RepVGGConfig:
    return RepVGGConfig(depths=(2, 4, 14, 1), widths=widths)


REPVGG_VARIANTS: dict[str, RepVGGConfig] = {
    "repvgg_a0": _a((0.75, 0.75, 0.75, 2.5)),
    "repvgg_a1": _a((1, 1, 1, 2.5)),
    "repvgg_a2": _a((1.5, 1.5, 1.5, 2.75)),
    "repvgg_b0": _b((1, 1, 1, 2.5)),
    "repvgg_b1": _b((2, 2, 2, 4)),
    "repvgg_b1g2": _b((2, 2, 2, 4), groups=2),
    "repvgg_b1g4": _b((2, 2, 2, 4), groups=4),
    "repvgg_b2": _b((2.5, 2.5, 2.5, 5)),
    "repvgg_b2g2": _b((2.5, 2.5, 2.5, 5), groups=2),
    "repvgg_b2g4": _b((2.5, 2.5, 2.5, 5), groups=4),
    "repvgg_b3": _b((3, 3, 3, 5)),
    "repvgg_b3g2": _b((3, 3, 3, 5), groups=2),
    "repvgg_b3g4": _b((3, 3, 3, 5), groups=4),
    "repvgg_d2se": RepVGGConfig(depths=(8, 14, 24, 1), widths=(2.5, 2.5, 2.5, 5), se=True),
}

# QARepVGG twins of the A/B family (D2se is left out: the paper defines no SE variant, and SE
# nets cannot be channel-pruned; create_model("repvgg_d2se", block="qa") still builds one).
QAREPVGG_VARIANTS: dict[str, RepVGGConfig] = {
    f"qa{name}": replace(config, block="qa")
    for name, config in REPVGG_VARIANTS.items()
    if not config.se
}
