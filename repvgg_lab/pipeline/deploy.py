"""The deploy entry point's logic: config -> `DeployOptions` -> `deploy` -> console table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from repvgg_lab.deploy import DeployOptions, run
from repvgg_lab.deploy.report import render
from repvgg_lab.pipeline.cli import DEPLOY_CHECKS, check_config
from repvgg_lab.pipeline.common import user_errors
from repvgg_lab.pipeline.prune import prune_options
from repvgg_lab.pipeline.summary import deploy_summary, print_summary
from repvgg_lab.pipeline.tracking import deploy_run, publish_deploy_run
from repvgg_lab.quant import QuantOptions

log = logging.getLogger(__name__)


def config_values(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain Python values; a missing mandatory value is a one-line error (the
    command line's own check, for callers that hand a config over directly)."""
    check_config(cfg, DEPLOY_CHECKS, "deploy")
    return dict(OmegaConf.to_container(cfg, resolve=True))  # a DictConfig gives a dict


def _as_list(value: Any) -> list[Any]:
    """`latency.batch_sizes=8` means [8]; null means none."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _default_out_dir() -> str:
    """The Hydra run folder when deploy.py runs under Hydra, else the current folder."""
    return HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else "."


def deploy_options(c: dict[str, Any]) -> DeployOptions:
    """The deploy config's values (configs/deploy/deploy.yaml) as checked `DeployOptions`."""
    latency, verify = c["latency"], c["verify"]
    return DeployOptions(
        model=c["model"],
        out_dir=c["out_dir"] or _default_out_dir(),
        input_size=c["input_size"],
        tolerance=c["tolerance"],
        batch_sizes=_as_list(latency["batch_sizes"]),
        rounds=latency["rounds"],
        warmup=latency["warmup"],
        verify_data=verify["data"],
        verify_root=verify["root"],
        verify_size=verify["size"],
        verify_batch=verify["batch"],
        workers=verify.get("workers"),
        opset=c["export"]["opset"],
        seed=c["seed"],
        threads=c["threads"],
        prune=prune_options(c.get("prune")),
        quantize=QuantOptions.from_mapping(c["quantize"]) if c.get("quantize") else None,
    )


def deploy(cfg: DictConfig) -> dict[str, Any]:
    """Run the deploy described by `cfg`, print its report table and return its metrics."""
    with user_errors():
        values = config_values(cfg)
        options = deploy_options(values)
        loggers = deploy_run(values, Path(options.out_dir))
        report = run.deploy(values["ckpt"], options)
    Console().print(render(report))
    publish_deploy_run(loggers, report)
    print_summary("repvgg_lab deploy", deploy_summary(report["metrics"], Path(report["out_dir"])))
    return report["metrics"]
