"""A plain net as data: a chain of conv -> per-channel activation (-> max-pool) and a pooled head.

RMNet conversions produce it directly, pruning reads and writes it, and `PlainNet.spec()` /
`PlainNet.from_spec()` describe any such net (pruned widths included) as plain JSON values.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from repvgg_lab.errors import InputError
from repvgg_lab.models.repvgg import Head


class ChannelClamp(nn.Module):
    """clamp(x, lower[c], upper[c]) per channel: ReLU is (0, inf), ReLU6 (0, 6), identity
    (-inf, inf). Lets one layer carry ReLU6 channels and pass-through channels side by side."""

    def __init__(self, lower: Tensor, upper: Tensor) -> None:
        super().__init__()
        self.register_buffer("lower", lower.reshape(1, -1, 1, 1).clone())
        self.register_buffer("upper", upper.reshape(1, -1, 1, 1).clone())

    def forward(self, x: Tensor) -> Tensor:
        return torch.minimum(torch.maximum(x, self.lower), self.upper)


def activation_bounds(act: nn.Module, channels: int) -> tuple[Tensor, Tensor]:
    """Per-channel (lower, upper) clamp bounds equivalent to `act`, in float64."""
    inf = math.inf
    if isinstance(act, ChannelClamp):
        return act.lower.flatten().double(), act.upper.flatten().double()
    if isinstance(act, nn.ReLU6):
        lo, hi = 0.0, 6.0
    elif isinstance(act, nn.ReLU):
        lo, hi = 0.0, inf
    elif isinstance(act, nn.Hardtanh):
        lo, hi = float(act.min_val), float(act.max_val)
    elif isinstance(act, nn.Identity):
        lo, hi = -inf, inf
    else:
        raise InputError(f"{type(act).__name__} is not a per-channel clamp activation")
    # Bounds are structural constants: keep them on the CPU even under a default-device context.
    kw = {"dtype": torch.float64, "device": "cpu"}
    return torch.full((channels,), lo, **kw), torch.full((channels,), hi, **kw)


def make_activation(lower: Tensor, upper: Tensor) -> nn.Module:
    """The simplest module for the given bounds: ReLU / ReLU6 / Identity, else ChannelClamp."""
    lo, hi = lower.double(), upper.double()
    for module, (a, b) in (
        (nn.ReLU(), (0.0, math.inf)),
        (nn.ReLU6(), (0.0, 6.0)),
        (nn.Identity(), (-math.inf, math.inf)),
    ):
        if bool((lo == a).all()) and bool((hi == b).all()):
            return module
    return ChannelClamp(lower, upper)


class PlainLayer(nn.Module):
    """conv (with bias) -> activation -> optional max-pool."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module, pool: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = conv
        self.act = act
        self.pool = pool if pool is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.act(self.conv(x)))


class PlainNet(nn.Module):
    """features (a Sequential of PlainLayer) -> global average pool -> linear head."""

    def __init__(self, layers: list[PlainLayer], head: Head) -> None:
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.head = head
        self.deploy = True

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def to_plain(self) -> PlainNet:
        """Already plain: a copy (lets `reparameterize` treat a PlainNet as converted)."""
        return copy.deepcopy(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def spec(self) -> dict[str, Any]:
        """Shapes and activation kinds as plain values (enough to rebuild the empty net)."""
        layers = []
        for layer in self.features:
            c = layer.conv
            pool = layer.pool
            layers.append(
                {
                    "in_channels": c.in_channels,
                    "out_channels": c.out_channels,
                    "kernel_size": c.kernel_size[0],
                    "stride": c.stride[0],
                    "padding": c.padding[0],
                    "groups": c.groups,
                    "act": type(layer.act).__name__,
                    "pool": None
                    if isinstance(pool, nn.Identity)
                    else [pool.kernel_size, pool.stride, pool.padding],
                }
            )
        fc = self.head.fc
        return {"layers": layers, "num_features": fc.in_features, "num_classes": fc.out_features}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> PlainNet:
        """An uninitialised PlainNet with the shapes of `spec` (load weights afterwards)."""
        acts = {"ReLU": nn.ReLU, "ReLU6": nn.ReLU6, "Identity": nn.Identity}
        layers = []
        for s in spec["layers"]:
            conv = nn.Conv2d(
                s["in_channels"],
                s["out_channels"],
                s["kernel_size"],
                stride=s["stride"],
                padding=s["padding"],
                groups=s["groups"],
                bias=True,
            )
            if s["act"] == "ChannelClamp":
                zeros = torch.zeros(s["out_channels"])
                act: nn.Module = ChannelClamp(zeros, zeros)
            else:
                act = acts[s["act"]]()
            pool = nn.MaxPool2d(*s["pool"]) if s["pool"] else None
            layers.append(PlainLayer(conv, act, pool))
        return cls(layers, Head(spec["num_features"], spec["num_classes"]))
