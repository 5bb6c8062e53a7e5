"""The deploy entry point's logic: config values -> `repvgg_lab.deploy.run.deploy` -> console."""

from __future__ import annotations

import logging
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from rich.console import Console

from repvgg_lab.deploy import run
from repvgg_lab.deploy.report import render
from repvgg_lab.errors import ConfigError
from repvgg_lab.pipeline.common import user_errors
from repvgg_lab.pipeline.prune import (
    calibration_batches,
    check_prune,
    prune_options,
    pruning_requested,
)

log = logging.getLogger(__name__)


def _values(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain Python values; a missing mandatory value is a one-line error."""
    try:
        values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        key = err.full_key or "a value"
        raise ConfigError(
            f"missing required option {key}= (e.g. python deploy.py {key}=...)"
        ) from None
    assert isinstance(values, dict)
    return values


def _as_list(value: Any) -> list[Any]:
    """`latency.batch_sizes=8` means [8]; null means none."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _prune_arguments(prune: dict[str, Any]) -> dict[str, Any]:
    """`prune_net` keyword arguments; calibration becomes `max_batches` (of verify.data)."""
    options = prune_options(prune)
    if n_batches := calibration_batches(prune):
        options["max_batches"] = n_batches
    return options


def _default_out_dir() -> str:
    return HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else "."


def deploy(cfg: DictConfig) -> dict[str, Any]:
    """Run the deploy described by `cfg`, print its report table and return its metrics."""
    with user_errors():
        c = _values(cfg)
        prune = c.get("prune")
        check_prune(prune)
        report = run.deploy(
            c["ckpt"],
            model=c["model"],
            out_dir=c["out_dir"] or _default_out_dir(),
            input_size=c["input_size"],
            tolerance=c["tolerance"],
            batch_sizes=_as_list(c["latency"]["batch_sizes"]),
            rounds=c["latency"]["rounds"],
            warmup=c["latency"]["warmup"],
            verify_data=c["verify"]["data"],
            verify_root=c["verify"]["root"],
            verify_size=c["verify"]["size"],
            verify_batch=c["verify"]["batch"],
            opset=c["export"]["opset"],
            seed=c["seed"],
            threads=c["threads"],
            prune=_prune_arguments(prune) if pruning_requested(prune) else None,
        )
    Console().print(render(report))
    return report["metrics"]
