"""A small ordinary CNN (conv + BN + ReLU, a strided, a dilated and a 5x5 conv), registered as
`small_cnn`: the stand-in for a user's own net in the branch studies. `branches` trains it with
`add_branches`' branch sets; its deploy form is always this plain architecture."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from repvgg_lab.errors import ConfigError, check_choice
from repvgg_lab.models.branched import BRANCH_CHOICES, with_branches
from repvgg_lab.models.online import INIT_SCALES, MODES

# (out channels, kernel, stride, padding, dilation) per conv + BN + ReLU layer.
LAYERS = (
    (16, 3, 1, 1, 1),
    (32, 3, 2, 1, 1),
    (32, 3, 1, 2, 2),
    (64, 5, 2, 2, 1),
    (64, 3, 1, 1, 1),
)


class SmallCNN(nn.Module):
    """Five conv + BN + ReLU layers (`features`), global average pooling and `fc`."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers, width = [], in_channels
        for out, k, s, p, d in LAYERS:
            conv = nn.Conv2d(width, out, k, s, p, d, bias=False)
            layers += [conv, nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            width = out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


@dataclass(frozen=True)
class SmallCNNConfig:
    """`small_cnn` with train-time branches ("none", "repvgg", "acb", "dbb"), trained "offline"
    (a BN per branch) or "online" (OREPA: scaled branches summed into one kernel)."""

    branches: str = "none"
    branch_mode: str = "offline"
    # Online scales at the start: "keep" (the net's own function) or "orepa" (OREPA's).
    branch_init: str = "keep"
    # Deploys as this architecture: deploy checks its graph against this net's own.
    keeps_architecture: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_choice(ConfigError, "branches", self.branches, BRANCH_CHOICES)
        check_choice(ConfigError, "branch_mode", self.branch_mode, MODES)
        check_choice(ConfigError, "branch_init", self.branch_init, INIT_SCALES)

    def build(self, num_classes: int = 1000, deploy: bool = False, in_channels: int = 3):
        net = SmallCNN(num_classes=num_classes, in_channels=in_channels)
        return with_branches(net, self.branches, deploy, self.branch_mode, self.branch_init)


SMALL_CNN_VARIANTS = {"small_cnn": SmallCNNConfig()}
