"""The `prune` config node (configs/prune/, deploy.yaml's `prune:`) as `PruneOptions`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from repvgg_lab.errors import PruningError
from repvgg_lab.prune import PruneOptions


def prune_options(node: DictConfig | Mapping[str, Any] | None) -> PruneOptions | None:
    """The checked options of the `prune` node, or None when it asks for no pruning (see
    `PruneOptions.from_mapping`); a bad value is a one-line `PruningError`, before any work."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if node is not None and not isinstance(node, Mapping):
        raise PruningError(f"prune must be a mapping of pruning options, got {node!r}")
    return PruneOptions.from_mapping(node)
