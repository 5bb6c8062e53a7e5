"""RMNet: torchvision ResNets and MobileNetV2 that convert exactly into plain nets (RM operation).

The training-form models *are* torchvision's (`RMResNet` subclasses `torchvision.models.ResNet`,
`RMMobileNetV2` subclasses `MobileNetV2`; no extra parameters or buffers), so torchvision state
dicts load as they are. `to_plain()` returns a `PlainNet`: every BN folded (the stem's too), every
residual addition removed by the RM operation (`repvgg_lab.reparam.rmnet`), in float64 arithmetic
rounded once to the model's dtype, on the model's device. `deploy=True` builds that plain
structure directly (uninitialised), so state dicts saved from a converted net load back into it.

Exactness assumptions, checked structurally in `to_plain`:
* ResNet (post-activation, torchvision v1.5): every block input is >= 0 (the previous block ends
  in ReLU; the first block follows stem ReLU + max-pool), so the reserved channels pass the
  in-block ReLUs unchanged and the plain net uses plain ReLUs.
* MobileNetV2: block inputs are linear (any sign), so reserved channels get identity bounds and the
  ReLU6 channels [0, 6] bounds, side by side in one `ChannelClamp` (exact, unlike PReLU).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models import MobileNetV2, ResNet
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops.misc import Conv2dNormActivation

from repvgg_lab.errors import ConversionError
from repvgg_lab.models.layers import new_conv, stem_conv
from repvgg_lab.models.plain import PlainLayer, PlainNet, activation_bounds, make_activation
from repvgg_lab.models.repvgg import Head
from repvgg_lab.reparam import BNStats
from repvgg_lab.reparam.rmnet import INF, PlainConv, folded, remove_residual
from repvgg_lab.reparam.rmnet import merge_pointwise as merge_pointwise_layers

log = logging.getLogger(__name__)


def _fold(conv: nn.Conv2d, bn: nn.Module | None, act: nn.Module | None, where: str) -> PlainConv:
    """conv -> BN -> act as a float64 PlainConv, after checking the conv is one we can chain."""
    k = conv.kernel_size[0]
    if conv.kernel_size != (k, k) or k % 2 == 0:
        raise ConversionError(f"{where}: only odd square kernels are supported, got {k}")
    if (
        conv.dilation != (1, 1)
        or conv.padding != (k // 2, k // 2)
        or conv.stride[0] != conv.stride[1]
        or conv.padding_mode != "zeros"
    ):
        raise ConversionError(
            f"{where}: needs dilation 1, zero padding k//2 and equal strides (got dilation "
            f"{conv.dilation}, padding {conv.padding} {conv.padding_mode}, stride {conv.stride})"
        )
    if bn is not None and not isinstance(bn, _BatchNorm):
        raise ConversionError(
            f"{where}: {type(bn).__name__} is not a BatchNorm and cannot be folded"
        )
    lower, upper = (-INF, INF)
    if act is not None:
        try:
            lo, hi = activation_bounds(act, 1)
        except TypeError as err:
            raise ConversionError(f"{where}: {err}") from None
        lower, upper = float(lo[0]), float(hi[0])
    return folded(
        conv.weight,
        BNStats.of(bn) if bn is not None else None,
        lower,
        upper,
        stride=conv.stride[0],
        groups=conv.groups,
        conv_bias=conv.bias,
    )


def _layer(spec: PlainConv, like: Tensor, pool: nn.Module | None = None) -> PlainLayer:
    """Materialise a float64 PlainConv on the dtype/device of `like`, rounding once."""
    conv = new_conv(
        like,
        spec.in_channels,
        spec.out_channels,
        spec.size,
        stride=spec.stride,
        padding=spec.size // 2,
        groups=spec.groups,
    )
    conv.weight.copy_(spec.kernel)
    conv.bias.copy_(spec.bias)
    act = make_activation(spec.lower, spec.upper).to(device=like.device, dtype=like.dtype)
    return PlainLayer(conv, act, pool)


def _plain_net(
    stem: PlainLayer, body: Iterable[PlainConv], fc: nn.Linear, like: Tensor, training: bool
) -> PlainNet:
    # `body` may be a generator: each float64 kernel is freed once rounded into its layer.
    layers = [stem, *(_layer(spec, like) for spec in body)]
    with torch.device("meta"):  # the head's own fc is replaced at once: skip its random init
        head = Head(fc.in_features, fc.out_features)
    head.fc = copy.deepcopy(fc)
    log.info("RM conversion: %d plain layers", len(layers))
    return PlainNet(layers, head).train(training)


def _require(module: nn.Module, kind: type | tuple[type, ...], where: str, why: str) -> None:
    if not isinstance(module, kind):
        raise ConversionError(f"{where} is {type(module).__name__}; {why}")


class RMResNet(ResNet):
    """torchvision's ResNet (same modules and state-dict keys) with an exact `to_plain()`.

    `grouped_bottleneck`: bottleneck 3x3s carry the reserved channels as a grouped Dirac (about
    5x the original's parameters) instead of RMNet's dense form (about 11x)."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        *,
        in_channels: int = 3,
        grouped_bottleneck: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(block, list(layers), num_classes=num_classes, **kwargs)
        if in_channels != 3:
            self.conv1 = stem_conv(self.conv1, in_channels)
        self.grouped_bottleneck = grouped_bottleneck
        self.deploy = False

    def _check_activations(self) -> None:
        why = (
            "the RM operation keeps plain ReLUs only because every block input is >= 0 "
            "(post-activation ResNet: stem ReLU + max-pool, each block ending in ReLU)"
        )
        _require(self.relu, nn.ReLU, "stem activation", why)
        _require(self.maxpool, nn.MaxPool2d, "stem pool", "expected torchvision's max-pool")
        for name, block in self._blocks():
            _require(block, (BasicBlock, Bottleneck), name, "expected a torchvision ResNet block")
            _require(block.relu, nn.ReLU, f"{name}.relu", why)

    def _blocks(self) -> list[tuple[str, nn.Module]]:
        return [
            (f"layer{i}.{j}", block)
            for i in range(1, 5)
            for j, block in enumerate(getattr(self, f"layer{i}"))
        ]

    def _block_math(
        self, name: str, block: BasicBlock | Bottleneck, grouped: bool
    ) -> list[PlainConv]:
        n = 3 if isinstance(block, Bottleneck) else 2
        # Inner convs carry the block's ReLU; the last one carries the ReLU after the addition.
        branch = [
            _fold(
                getattr(block, f"conv{i}"), getattr(block, f"bn{i}"), block.relu, f"{name}.conv{i}"
            )
            for i in range(1, n + 1)
        ]
        shortcut = None
        if block.downsample is not None:
            ds = block.downsample
            if not (
                isinstance(ds, nn.Sequential) and len(ds) == 2 and isinstance(ds[0], nn.Conv2d)
            ):
                raise ConversionError(f"{name}.downsample: expected Sequential(conv1x1, BN)")
            shortcut = _fold(ds[0], ds[1], None, f"{name}.downsample")
        try:
            return remove_residual(branch, shortcut, nonnegative_input=True, grouped=grouped)
        except ValueError as err:
            raise ConversionError(f"{name}: {err}") from None

    @torch.no_grad()
    def to_plain(self, grouped_bottleneck: bool | None = None) -> PlainNet:
        """The exact plain equivalent (a new net; this one is left untouched)."""
        grouped = self.grouped_bottleneck if grouped_bottleneck is None else grouped_bottleneck
        self._check_activations()
        like = self.conv1.weight
        stem = _layer(
            _fold(self.conv1, self.bn1, self.relu, "conv1"), like, copy.deepcopy(self.maxpool)
        )
        body = (spec for name, b in self._blocks() for spec in self._block_math(name, b, grouped))
        return _plain_net(stem, body, self.fc, like, self.training)


def _conv_norm_act(module: nn.Module, where: str) -> PlainConv:
    """A torchvision Conv2dNormActivation (conv, BN, activation) as a PlainConv."""
    _require(module, Conv2dNormActivation, where, "expected Conv2dNormActivation(conv, BN, act)")
    parts = list(module)
    if len(parts) != 3:
        raise ConversionError(
            f"{where}: expected conv, BN and activation, found {len(parts)} parts"
        )
    return _fold(parts[0], parts[1], parts[2], where)


class RMMobileNetV2(MobileNetV2):
    """torchvision's MobileNetV2 (same modules and state-dict keys) with an exact `to_plain()`.

    `merge_pointwise`: multiply each linear 1x1 projection into the next block's 1x1 expansion
    (RMNet's "MobileNetV1" form: fewer layers, but more MACs since the bottleneck is narrow)."""

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        in_channels: int = 3,
        merge_pointwise: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
        if in_channels != 3:
            stem = self.features[0][0]
            self.features[0][0] = stem_conv(stem, in_channels)
        self.merge_pointwise = merge_pointwise
        self.deploy = False

    def _block_math(self, name: str, block: InvertedResidual) -> list[PlainConv]:
        parts = list(block.conv)
        if len(parts) < 3 or not isinstance(parts[-2], nn.Conv2d):
            raise ConversionError(f"{name}: expected [conv-BN-act ..., conv1x1, BN]")
        convs = [_conv_norm_act(p, f"{name}.conv.{i}") for i, p in enumerate(parts[:-2])]
        convs.append(_fold(parts[-2], parts[-1], None, f"{name}.conv.{len(parts) - 2}"))
        if not block.use_res_connect:
            return convs
        try:
            return remove_residual(convs, None, nonnegative_input=False)
        except ValueError as err:
            raise ConversionError(f"{name}: {err}") from None

    @torch.no_grad()
    def to_plain(self, merge_pointwise: bool | None = None) -> PlainNet:
        """The exact plain equivalent (a new net; this one is left untouched)."""
        merge = self.merge_pointwise if merge_pointwise is None else merge_pointwise
        body: list[PlainConv] = []
        for i, module in enumerate(self.features):
            where = f"features.{i}"
            if isinstance(module, InvertedResidual):
                body.extend(self._block_math(where, module))
            else:
                body.append(_conv_norm_act(module, where))
        if merge:
            body = merge_pointwise_layers(body)
        fc = self.classifier[-1]
        _require(fc, nn.Linear, "classifier[-1]", "expected the linear classifier")
        like = self.features[0][0].weight
        return _plain_net(_layer(body[0], like), body[1:], fc, like, self.training)


@dataclass(frozen=True)
class RMResNetConfig:
    """torchvision ResNet stage depths and block type; `build` makes an `RMResNet`."""

    layers: tuple[int, int, int, int]
    bottleneck: bool = False
    grouped_bottleneck: bool = True

    def build(self, num_classes: int = 1000, deploy: bool = False, **kwargs: Any) -> nn.Module:
        """Training form (torchvision keys), or with `deploy` the empty plain net."""
        block = Bottleneck if self.bottleneck else BasicBlock

        def make() -> RMResNet:
            return RMResNet(
                block,
                self.layers,
                num_classes,
                grouped_bottleneck=self.grouped_bottleneck,
                **kwargs,
            )

        return plain_structure(make) if deploy else make()


@dataclass(frozen=True)
class RMMobileNetV2Config:
    """torchvision MobileNetV2; `build` makes an `RMMobileNetV2` (kwargs: width_mult, ...)."""

    merge_pointwise: bool = False

    def build(self, num_classes: int = 1000, deploy: bool = False, **kwargs: Any) -> nn.Module:
        """Training form (torchvision keys), or with `deploy` the empty plain net."""

        def make() -> RMMobileNetV2:
            return RMMobileNetV2(num_classes, merge_pointwise=self.merge_pointwise, **kwargs)

        return plain_structure(make) if deploy else make()


def plain_structure(make: Any) -> PlainNet:
    """The PlainNet that `make().to_plain()` would return, default-initialised, without ever
    allocating the training-form net (it is built and converted on the meta device)."""
    with torch.device("meta"):
        spec = make().to_plain().spec()
    return PlainNet.from_spec(spec)


RMNET_VARIANTS: dict[str, RMResNetConfig | RMMobileNetV2Config] = {
    "rmnet_resnet18": RMResNetConfig(layers=(2, 2, 2, 2)),
    "rmnet_resnet34": RMResNetConfig(layers=(3, 4, 6, 3)),
    "rmnet_resnet50": RMResNetConfig(layers=(3, 4, 6, 3), bottleneck=True),
    "rmnet_mobilenet_v2": RMMobileNetV2Config(),
}
