"""`python train.py`: fit the multi-branch net, re-parameterize, evaluate, fine-tune, record."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from repvgg_lab.errors import ConfigError
from repvgg_lab.fileio import write_json
from repvgg_lab.lit.callbacks import Reparameterize, describe
from repvgg_lab.lit.ema import EMA
from repvgg_lab.lit.evaluate import evaluate_like_trainer
from repvgg_lab.lit.module import ClassifierModule
from repvgg_lab.models.checkpoints import plain_metadata, save_weights
from repvgg_lab.pipeline.common import user_errors
from repvgg_lab.pipeline.prune import prune_options
from repvgg_lab.pipeline.qat import qat_options, run_qat
from repvgg_lab.pipeline.summary import print_summary, train_summary
from repvgg_lab.pipeline.tracking import publish_training_run
from repvgg_lab.prune import PruneOptions, check_prunable, prune_and_measure

log = logging.getLogger(__name__)

if not OmegaConf.has_resolver("if_cuda"):
    # ${if_cuda:a,b} -> a on a machine with a CUDA GPU, b otherwise (trainer defaults).
    OmegaConf.register_new_resolver("if_cuda", lambda a, b: a if torch.cuda.is_available() else b)


def slurm_run_name(stamp: str) -> str:
    """`slurm-<job id>` inside a SLURM batch job, `stamp` elsewhere: a requeued job then writes
    into (and resumes from) the run folder of its first start, and all tasks of a job share it."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ.get("SLURM_JOB_ID")
    interactive = os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive")
    return f"slurm-{job}" if job and not interactive else stamp


if not OmegaConf.has_resolver("run_name"):
    OmegaConf.register_new_resolver("run_name", slurm_run_name)


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def _check_accelerator(trainer_cfg: dict[str, Any]) -> None:
    """A GPU accelerator on a machine without one: one line now, not Lightning's report."""
    accelerator = trainer_cfg.get("accelerator")
    found = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    found["gpu"] = found["cuda"] or found["mps"]
    if accelerator in found and not found[accelerator]:
        raise ConfigError(
            f"trainer.accelerator={accelerator} needs a GPU and torch finds none on this "
            "machine; leave trainer at its default (the GPU when there is one, else the CPU) "
            "or use trainer=cpu"
        )


def _check_sync_batchnorm(trainer_cfg: dict[str, Any]) -> None:
    """SyncBatchNorm is CUDA-only in torch's DDP: say so before training, not deep inside it."""
    on_cpu = trainer_cfg.get("accelerator") == "cpu" or not torch.cuda.is_available()
    if trainer_cfg.get("sync_batchnorm") and on_cpu:
        raise ConfigError(
            "trainer.sync_batchnorm=true needs CUDA GPUs; on CPU add trainer.sync_batchnorm=false "
            "(each process keeps its own BN statistics)"
        )


def _ema(cfg: DictConfig) -> list[pl.Callback]:
    """The EMA callback when `ema.decay` is set; the best checkpoint then follows ema/val/acc."""
    decay = cfg.get("ema", {}).get("decay")
    if decay is None:
        return []
    return [EMA(decay=decay, warmup=bool(cfg.ema.get("warmup", True)))]


def _monitor_ema(callbacks: list[Any]) -> None:
    """Best-checkpoint callbacks that watch val/acc watch the EMA net's ema/val/acc instead."""
    if any(isinstance(c, EMA) for c in callbacks):
        for c in callbacks:
            if isinstance(c, pl.callbacks.ModelCheckpoint) and c.monitor == "val/acc":
                c.monitor = "ema/val/acc"
                log.info("EMA on: the best checkpoint is chosen by ema/val/acc")


def build(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate datamodule, LightningModule, callbacks, loggers and trainer from `cfg`."""
    datamodule = instantiate(cfg.data)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    channels_last = bool(trainer_cfg.pop("channels_last", False))
    _check_accelerator(trainer_cfg)
    _check_sync_batchnorm(trainer_cfg)
    module = instantiate(
        cfg.model,
        num_classes=datamodule.num_classes,
        in_channels=datamodule.in_channels,
        input_size=datamodule.img_size,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler),
        init=instantiate(cfg.init),
        channels_last=channels_last,
        compile_backend=cfg.compile_backend if cfg.get("compile") else None,
    )
    callbacks = _instantiate_all(cfg.get("callbacks")) + _ema(cfg)
    _monitor_ema(callbacks)
    loggers = _instantiate_all(cfg.get("logger"))
    trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)
    return {
        "datamodule": datamodule,
        "module": module,
        "callbacks": callbacks,
        "loggers": loggers,
        "trainer": trainer,
        "trainer_cfg": trainer_cfg,
    }


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in metrics.items() if torch.is_tensor(v) or isinstance(v, int | float)
    }


def _distill_options(finetune: DictConfig) -> tuple[float, float]:
    """(finetune.distill, finetune.temperature); null means 0 and 4."""
    distill, temperature = finetune.get("distill"), finetune.get("temperature")
    return float(distill or 0.0), float(4.0 if temperature is None else temperature)


def _check_finetune(finetune: DictConfig) -> None:
    distill, temperature = _distill_options(finetune)
    if not 0.0 <= distill <= 1.0:
        raise ConfigError(f"finetune.distill must lie in [0, 1], got {distill}")
    if temperature <= 0:
        raise ConfigError(f"finetune.temperature must be > 0, got {temperature}")


def _finetune(
    cfg: DictConfig, parts: dict[str, Any], plain: torch.nn.Module, teacher: torch.nn.Module
) -> dict[str, float]:
    """Fine-tune the plain net for `finetune.epochs`, distilling from `teacher` (the net before
    pruning) with weight `finetune.distill`; returns `finetune/*` metrics."""
    hp = parts["module"].hparams
    distill, temperature = _distill_options(cfg.finetune)
    optimizer = instantiate(cfg.optimizer, lr=cfg.finetune.lr)
    module = ClassifierModule(
        model_name=hp.model_name,
        num_classes=hp.num_classes,
        in_channels=hp.in_channels,
        input_size=hp.input_size,
        model_kwargs=dict(hp.model_kwargs or {}),
        optimizer=optimizer,
        scheduler=instantiate(cfg.scheduler),
        lr_batch_reference=hp.lr_batch_reference,
        channels_last=hp.channels_last,
        metric_prefix="finetune",
        net=plain,
        teacher=copy.deepcopy(teacher) if distill > 0 else None,
        distill=distill,
        temperature=temperature,
    )
    trainer_cfg = {k: v for k, v in parts["trainer_cfg"].items() if k != "fast_dev_run"}
    trainer_cfg.update(max_epochs=int(cfg.finetune.epochs), enable_checkpointing=False)
    if parts["trainer"].world_size > 1:
        # Conversion and pruning run on rank 0 only (the other ranks have no plain net and have
        # finished), so the plain net is fine-tuned there, on one device. The process group goes
        # first: metrics would otherwise wait to synchronise with ranks that are gone.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        trainer_cfg.update(strategy="auto", devices=1, num_nodes=1, sync_batchnorm=False)
    bars = [c for c in parts["callbacks"] if isinstance(c, pl.callbacks.ProgressBar)]
    trainer = instantiate(trainer_cfg, callbacks=bars, logger=parts["loggers"] or False)
    trainer.fit(module, datamodule=parts["datamodule"])
    metrics = _scalars(trainer.callback_metrics)
    metrics.update(_scalars(trainer.test(module, datamodule=parts["datamodule"])[0]))
    if trainer.is_global_zero:
        meta = plain_metadata(module.net, **describe(parts["module"]))
        save_weights(module.net, Path(cfg.output_dir) / "plain_finetuned.safetensors", meta)
    return metrics


def _prune(
    options: PruneOptions, parts: dict[str, Any], plain: torch.nn.Module, output_dir: Path
) -> tuple[torch.nn.Module, dict[str, float]]:
    """Prune the plain net, time and evaluate it before fine-tuning, save it with its layout."""
    dm, module = parts["datamodule"], parts["module"]
    calibration = None
    if options.calibration_batches:
        # The same training images (eval transforms) every time: reruns prune alike.
        calibration = dm.fixed_loader("train", options.calibration_batches * dm.batch_size)
    result = prune_and_measure(plain, options, dm.img_size, calibration)
    metrics = {k: float(v) for k, v in result.metrics.items()}
    for stage in ("val", "test"):  # the images the Trainer measures the other nets on
        evaluated = evaluate_like_trainer(result.net, parts["trainer"], stage, module.device)
        if evaluated is not None:
            metrics[f"prune/{stage}/acc"] = evaluated["acc"]
    _log(parts["loggers"], metrics)
    if parts["trainer"].is_global_zero:
        # plain_metadata stores the pruned layout (plain_spec): deploy.py and
        # repvgg_lab.deploy.load_source rebuild the net from this file alone.
        meta = plain_metadata(result.net, **describe(module))
        save_weights(result.net, output_dir / "pruned.safetensors", meta)
    log.info("pruned: test acc %s before fine-tuning", metrics.get("prune/test/acc", "-"))
    return result.net, metrics


def _log(loggers: list[Any], metrics: dict[str, float]) -> None:
    for logger in loggers:
        logger.log_metrics(metrics)


def _finish_loggers(loggers: list[Any], metrics: dict[str, float]) -> None:
    """Put every final metric in the experiment summary and close W&B runs (needed in
    multiruns, where the next job would otherwise log into the same run)."""
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        summary = getattr(experiment, "summary", None)
        if summary is not None and hasattr(summary, "update"):
            summary.update(metrics)
        if callable(getattr(experiment, "finish", None)):
            experiment.finish()


def _run(cfg: DictConfig) -> dict[str, float]:
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        log.info("seed %d", cfg.seed)
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
    pruning = prune_options(cfg.get("prune"))  # a bad prune option fails now, not after training
    if pruning is not None:
        check_prunable(cfg.model.model_name)  # so does a model pruning cannot take
    qat = qat_options(cfg.finetune)
    _check_finetune(cfg.finetune)
    output_dir = Path(cfg.output_dir)
    parts = build(cfg)
    trainer, module, dm = parts["trainer"], parts["module"], parts["datamodule"]
    metrics: dict[str, float] = {}
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
        metrics.update(_scalars(trainer.callback_metrics))
        if cfg.get("test", True):
            metrics.update(_scalars(trainer.test(module, datamodule=dm)[0]))
        reparam = next((c for c in parts["callbacks"] if isinstance(c, Reparameterize)), None)
        if reparam is not None and reparam.plain_net is not None:
            metrics.update(reparam.metrics)
            plain = unpruned = reparam.plain_net
            if pruning is not None:
                plain, prune_metrics = _prune(pruning, parts, plain, output_dir)
                metrics.update(prune_metrics)
            if cfg.finetune.epochs > 0 and qat is not None:
                metrics.update(run_qat(cfg.finetune, qat, dm, plain, output_dir))
            elif cfg.finetune.epochs > 0:
                metrics.update(_finetune(cfg, parts, plain, unpruned))
        if trainer.is_global_zero:
            write_json(output_dir / "metrics.json", metrics)
            log.info("metrics written to %s", output_dir / "metrics.json")
            blocks = reparam.blocks if reparam is not None else {}
            publish_training_run(parts["loggers"], output_dir, blocks)
    finally:
        _finish_loggers(parts["loggers"], metrics)
    return metrics


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one training job described by `cfg`; returns the final metrics."""
    with user_errors():
        metrics = _run(cfg)
    if rank_zero_only.rank == 0:  # one summary per run, not one per DDP process
        print_summary("repvgg_lab train", train_summary(metrics, Path(cfg.output_dir)))
    return metrics
