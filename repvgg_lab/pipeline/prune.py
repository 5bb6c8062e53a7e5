"""The `prune` config node (configs/prune/, deploy.yaml's `prune:`) as `prune_net` arguments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args

from repvgg_lab.errors import ConfigError
from repvgg_lab.prune.channels import Scope, Score

CRITERIA = ("threshold", "ratio", "macs_reduction")


def pruning_requested(prune: Mapping[str, Any] | None) -> bool:
    """True when the prune node asks for pruning (enabled, or a criterion set by hand)."""
    if not prune:
        return False
    return bool(prune.get("enabled")) or any(prune.get(k) is not None for k in CRITERIA)


def check_prune(prune: Mapping[str, Any] | None) -> None:
    """Refuse, before any training or conversion, options that pruning would refuse later."""
    if not pruning_requested(prune):
        return
    assert prune is not None
    chosen = [f"prune.{k}" for k in CRITERIA if prune.get(k) is not None]
    if len(chosen) > 1:
        raise ConfigError(
            f"give one pruning criterion, got {' and '.join(chosen)} (set the others to null, "
            "e.g. prune.macs_reduction=null)"
        )
    for key, allowed in (("scope", get_args(Scope)), ("score", get_args(Score))):
        value = prune.get(key)
        if value is not None and value not in allowed:
            raise ConfigError(f"prune.{key}={value!r} is not one of {', '.join(allowed)}")
    calibration_batches(prune)  # both raise on a bad value
    latency_rounds(prune)


def prune_options(prune: Mapping[str, Any]) -> dict[str, Any]:
    """The prune node as keyword arguments of `prune_net`.

    `enabled` without a criterion means threshold 0: remove only the channels whose removal is
    exact (zero score), the one setting that can never cost accuracy."""
    keys = (*CRITERIA, "scope", "score", "normalize")
    options = {k: prune.get(k) for k in keys if prune.get(k) is not None}
    if not any(k in options for k in CRITERIA):
        options["threshold"] = 0.0
    options["min_channels"] = int(prune.get("min_channels", 1))
    options["multiple"] = int(prune.get("multiple", 1))
    return options


def calibration_batches(prune: Mapping[str, Any]) -> int:
    """How many batches of real images recalibrate a lossily pruned net (0: none)."""
    return _count(prune, "calibration_batches")


def latency_rounds(prune: Mapping[str, Any]) -> int:
    """How many interleaved rounds time the net before and after pruning (0: not timed)."""
    return _count(prune, "latency_rounds")


def _count(prune: Mapping[str, Any], key: str) -> int:
    value = prune.get(key) or 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"prune.{key} must be an integer >= 0, got {value!r}")
    return value
