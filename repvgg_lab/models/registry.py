"""The one model registry: every architecture is a named config whose `build` makes the net."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from torch import nn

from repvgg_lab.errors import UnknownModelError
from repvgg_lab.models.mobileone import MOBILEONE_VARIANTS
from repvgg_lab.models.repvgg import QAREPVGG_VARIANTS, REPVGG_VARIANTS
from repvgg_lab.models.rmnet import RMNET_VARIANTS
from repvgg_lab.models.small_cnn import SMALL_CNN_VARIANTS


class ModelConfig(Protocol):
    def build(self, num_classes: int = 1000, deploy: bool = False, **kwargs: Any) -> nn.Module: ...


MODELS: dict[str, ModelConfig] = {
    **REPVGG_VARIANTS,
    **QAREPVGG_VARIANTS,
    **RMNET_VARIANTS,
    **MOBILEONE_VARIANTS,
    **SMALL_CNN_VARIANTS,
}


def list_models() -> list[str]:
    """Names accepted by `create_model`."""
    return sorted(MODELS)


def get_config(name: str) -> ModelConfig:
    """The registry entry for `name`, or a one-line error listing the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}"
        ) from None


def create_model(
    name: str, num_classes: int = 1000, deploy: bool = False, **overrides: Any
) -> nn.Module:
    """Build a registered model; `overrides` replace config fields (e.g. groups=2) or go to the
    constructor (e.g. in_channels=1)."""
    config = get_config(name)
    fields = (
        {f.name for f in dataclasses.fields(config)} if dataclasses.is_dataclass(config) else set()
    )
    config_changes = {k: v for k, v in overrides.items() if k in fields}
    if config_changes:
        config = dataclasses.replace(config, **config_changes)
    kwargs = {k: v for k, v in overrides.items() if k not in fields}
    try:
        return config.build(num_classes=num_classes, deploy=deploy, **kwargs)
    except TypeError as err:
        raise TypeError(f"{name}: unsupported option(s) {sorted(kwargs)}: {err}") from None
