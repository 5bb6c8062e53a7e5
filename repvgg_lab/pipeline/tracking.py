"""What a run puts in Weights & Biases beyond scalars: its files as artifacts, the per-block
drift as a table, plots as images. Everything goes through Lightning's `WandbLogger` (offline by
default, like the rest); without a W&B logger these functions do nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import WandbLogger

from repvgg_lab.errors import ConfigError

log = logging.getLogger(__name__)

DRIFT_COLUMNS = ("measurement", "block", "train_rel_max", "deploy_rel_max", "rel_max")


def wandb_loggers(loggers: Iterable[Any]) -> list[WandbLogger]:
    """The W&B loggers among `loggers`."""
    return [logger for logger in loggers if isinstance(logger, WandbLogger)]


def log_files(loggers: Iterable[Any], kind: str, paths: Iterable[Path]) -> None:
    """Each existing file in `paths` as an artifact `<run id>-<file stem>` of type `kind`."""
    for logger in wandb_loggers(loggers):
        run = logger.experiment
        for path in paths:
            if path.is_file():
                name = f"{run.id}-{path.stem.replace('.', '_')}"
                run.log_artifact(str(path), name=name, type=kind)
                log.info("W&B artifact %s (%s): %s", name, kind, path.name)


def drift_rows(blocks: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[list[Any]]:
    """`drift_blocks.json` content as table rows (one per measurement and block)."""
    return [
        [prefix, block, *(values.get(c) for c in DRIFT_COLUMNS[2:])]
        for prefix, per_block in blocks.items()
        for block, values in per_block.items()
    ]


def log_drift_table(loggers: Iterable[Any], blocks: Mapping[str, Any]) -> None:
    """The per-block drift as the W&B table `drift/blocks`."""
    rows = drift_rows(blocks)
    for logger in wandb_loggers(loggers):
        if rows:
            logger.log_table("drift/blocks", columns=list(DRIFT_COLUMNS), data=rows)


def log_images(loggers: Iterable[Any], key: str, paths: Iterable[Path]) -> None:
    """Plots (PNG files) as W&B images under `key`."""
    images = [str(p) for p in paths if p.is_file()]
    for logger in wandb_loggers(loggers):
        if images:
            logger.log_image(key, images=images)


def publish_training_run(
    loggers: Iterable[Any], output_dir: Path, blocks: Mapping[str, Any]
) -> None:
    """A finished `train.py` run: its weights and metrics as artifacts, the drift table."""
    loggers = list(loggers)
    weights = ("plain.safetensors", "pruned.safetensors", "plain_finetuned.safetensors")
    log_files(loggers, "model", [output_dir / name for name in weights])
    log_files(loggers, "metrics", [output_dir / "metrics.json", output_dir / "drift_blocks.json"])
    log_drift_table(loggers, blocks)


def deploy_run(values: Mapping[str, Any], out_dir: Path) -> list[WandbLogger]:
    """The W&B logger of a deploy (`logger: wandb`), or none (`logger: none`)."""
    choice = values.get("logger", "none")
    if choice not in ("wandb", "none"):
        raise ConfigError(f"logger must be one of wandb, none, got {choice!r}")
    if choice == "none":
        return []
    settings = values.get("wandb") or {}
    logger = WandbLogger(
        project=settings.get("project", "repvgg_lab"),
        name="deploy",
        save_dir=str(out_dir),
        offline=bool(settings.get("offline", True)),
    )
    return [logger]


def publish_deploy_run(loggers: list[WandbLogger], report: Mapping[str, Any]) -> None:
    """A finished deploy: its metrics, exports and report as W&B records; closes the run."""
    out_dir, files = Path(report["out_dir"]), report["files"]
    numbers = {k: v for k, v in report["metrics"].items() if isinstance(v, int | float)}
    for logger in loggers:
        logger.log_metrics(numbers)
        logger.experiment.summary.update(numbers)
    onnx = [out_dir / name for key, name in files.items() if key.startswith("onnx")]
    log_files(loggers, "model", onnx)
    log_files(loggers, "report", [out_dir / files["report"], out_dir / files["metrics"]])
    for logger in loggers:
        logger.experiment.finish()


def publish_study(folder: Path, name: str, plots: list[Path], files: list[Path]) -> Path:
    """A study's plots as W&B images and its tables as an artifact, in an offline run saved
    under `folder` (upload later with `wandb sync`); returns the run's folder."""
    logger = WandbLogger(project="repvgg_lab", name=name, save_dir=str(folder), offline=True)
    log_images([logger], f"{name}/plots", plots)
    log_files([logger], "study", files)
    run_dir = Path(logger.experiment.dir).parent
    logger.experiment.finish()
    return run_dir
