"""Any torchvision classifier as a registry model: `tv_<name>` for every name of
`torchvision.models.list_models(module=torchvision.models)` (`tv_resnet18`, `tv_vgg11_bn`,
`tv_mobilenet_v2`, ...), resolved when asked for, never listed by hand.

The training form is torchvision's own net (random weights) with train-time branches on every
conv + BN pair (`add_branches`: "repvgg", "acb", "dbb"), or the net as it is ("none"). The deploy
form is torchvision's architecture itself: `reparameterize` of the training form returns it, and
its state dict loads strictly into `create_model(name, deploy=True)`.
"""

from __future__ import annotations

import difflib
import functools
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torchvision
from torch import nn

from repvgg_lab.errors import ConfigError, UnknownModelError, check_choice, check_integer
from repvgg_lab.models.branched import BRANCH_CHOICES, with_branches
from repvgg_lab.models.layers import stem_conv
from repvgg_lab.models.online import INIT_SCALES, MODES

log = logging.getLogger(__name__)

PREFIX = "tv_"
# Offered when a tv_ name is unknown and nothing close to it exists.
_EXAMPLES = ("resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "efficientnet_b0")


@functools.cache
def torchvision_archs() -> tuple[str, ...]:
    """torchvision's classification model names (detection, video etc. are not classifiers)."""
    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def torchvision_names() -> list[str]:
    """Every `tv_` name `create_model` accepts."""
    return [PREFIX + arch for arch in torchvision_archs()]


def _unknown(name: str) -> UnknownModelError:
    arch = name.removeprefix(PREFIX)
    close = difflib.get_close_matches(arch, torchvision_archs(), n=4, cutoff=0.6)
    shown = ", ".join(PREFIX + a for a in (close or _EXAMPLES))
    return UnknownModelError(
        f"unknown torchvision model {name!r}; tv_ takes any of torchvision's "
        f"{len(torchvision_archs())} classifiers, e.g. {shown}"
    )


@dataclass(frozen=True)
class TorchvisionConfig:
    """torchvision classifier `arch` with train-time `branches` ("none", "repvgg", "acb",
    "dbb") on each conv + BN pair, trained "offline" or "online" (`branch_mode`, see
    `add_branches`); `build` makes the net (see the module docstring)."""

    arch: str
    branches: str = "none"
    branch_mode: str = "offline"
    # Online scales at the start: "keep" (the net's own function) or "orepa" (OREPA's).
    branch_init: str = "keep"
    # The deploy form is this architecture, not a plain conv stack: deploy checks the exported
    # graph against the architecture's own graph (repvgg_lab.deploy.export.check_same_graph).
    keeps_architecture: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.arch not in torchvision_archs():
            raise _unknown(self.name)
        check_choice(ConfigError, "branches", self.branches, BRANCH_CHOICES)
        check_choice(ConfigError, "branch_mode", self.branch_mode, MODES)
        check_choice(ConfigError, "branch_init", self.branch_init, INIT_SCALES)

    @property
    def name(self) -> str:
        return PREFIX + self.arch

    def build(
        self, num_classes: int = 1000, deploy: bool = False, in_channels: int = 3, **kwargs: Any
    ) -> nn.Module:
        """torchvision's net (`weights=None`; `kwargs` go to its builder) for `in_channels`
        inputs, with branches unless `deploy` or `branches="none"`."""
        check_integer(ConfigError, "in_channels", in_channels, 1)
        net = torchvision.models.get_model(
            self.arch, weights=None, num_classes=num_classes, **kwargs
        )
        if in_channels != 3:
            _replace_stem(net, in_channels, self.name)
        try:
            return with_branches(net, self.branches, deploy, self.branch_mode, self.branch_init)
        except ValueError as err:  # no conv + BN pair at all (e.g. a vision transformer)
            raise ConfigError(f"{self.name}: {err}; use branches=none") from None


def _replace_stem(net: nn.Module, in_channels: int, name: str) -> None:
    """Swap the first conv (registration order: torchvision's stem) for one taking
    `in_channels` inputs, kaiming-initialised as torchvision initialises its convs."""
    found = next(((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None or found[1].in_channels != 3 or found[1].groups != 1:
        raise ConfigError(f"{name}: no 3-channel stem conv to adapt to in_channels={in_channels}")
    path, conv = found
    parent, _, child = path.rpartition(".")
    setattr(net.get_submodule(parent), child, stem_conv(conv, in_channels))
    log.info("%s: stem %s takes %d input channels", name, path, in_channels)


def torchvision_config(name: str) -> TorchvisionConfig | None:
    """The config of a `tv_` name (UnknownModelError if torchvision has no such classifier);
    None for a name without the `tv_` prefix."""
    if not name.startswith(PREFIX):
        return None
    return TorchvisionConfig(name.removeprefix(PREFIX))
