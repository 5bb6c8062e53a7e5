"""Re-parameterize at the end of fit: convert, measure drift, evaluate and save the plain net."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from repvgg_lab.fileio import write_json
from repvgg_lab.lit.ema import EMA
from repvgg_lab.lit.evaluate import evaluate_like_trainer
from repvgg_lab.models import measure_drift, reparameterize
from repvgg_lab.models.checkpoints import plain_metadata, save_weights
from repvgg_lab.utils import count_macs, count_params, tf32

log = logging.getLogger(__name__)


# Not a dtype: float32 evaluated with TF32 allowed in cuDNN convs and CUDA matmuls.
TF32 = "tf32"


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(
            f"unknown dtype {name!r} (use float32, bfloat16, float16, float64 or tf32)"
        )
    return dtype


def _drift_modes(names: tuple[str, ...] | list[str]) -> list[tuple[str, torch.dtype, bool]]:
    """(label, dtype, tf32) per configured drift dtype; the first one names the unprefixed
    `drift/*` metrics, so it must be measurable on every machine (TF32 is CUDA-only)."""
    modes = []
    for name in names:
        if name == TF32:
            modes.append((TF32, torch.float32, True))
        else:
            dtype = _dtype(name)
            modes.append((str(dtype).removeprefix("torch."), dtype, False))
    if not modes:
        raise ValueError("drift_dtypes is empty: give at least one dtype (e.g. [float32])")
    if modes[0][2]:
        raise ValueError("drift_dtypes must not start with tf32 (CUDA-only); put float32 first")
    return modes


class Reparameterize(pl.Callback):
    """At fit end (rank 0): convert the multi-branch net to its plain form, measure drift on a
    fixed validation batch against float64, evaluate the plain net on val and test
    (`deploy/*`), and save its weights as `plain.safetensors` in `output_dir`. With an `EMA`
    callback on the trainer the averaged net is the one converted (`deploy/from_ema` = 1).

    `drift_dtypes` beyond the first are logged as `drift/<dtype>/...`; `tf32` there means float32
    with TF32 switched on (`drift/tf32/...`; every other check runs with TF32 off) and is skipped,
    with a logged note, unless the net is on a CUDA device. With `at_init` the drift of the
    untrained net is logged as `drift/init/...` too. Per-block results are written to
    `drift_blocks.json`. Results stay in `self.metrics` and `self.plain_net` for the pipeline
    (fine-tuning, pruning, metrics.json)."""

    def __init__(
        self,
        output_dir: str | None = None,
        drift_batch_size: int = 64,
        drift_dtypes: tuple[str, ...] = ("float32",),
        at_init: bool = False,
        evaluate_plain: bool = True,
        save: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        self.drift_batch_size = drift_batch_size
        self.drift_modes = _drift_modes(drift_dtypes)
        self.at_init = at_init
        self.evaluate_plain = evaluate_plain
        self.save = save
        self.metrics: dict[str, float] = {}
        self.blocks: dict[str, Any] = {}
        self.plain_net: nn.Module | None = None

    def _batch(self, trainer: pl.Trainer) -> torch.Tensor:
        return trainer.datamodule.fixed_batch("val", self.drift_batch_size)[0]

    def _drift(
        self, net: nn.Module, inputs: torch.Tensor, tag: str
    ) -> tuple[dict[str, float], nn.Module]:
        """Drift metrics in every configured dtype; returns them and the plain net (first dtype)."""
        metrics: dict[str, float] = {}
        converted: dict[torch.dtype, tuple[nn.Module, nn.Module]] = {}
        on_cuda = next(net.parameters()).device.type == "cuda"
        for i, (label, dtype, with_tf32) in enumerate(self.drift_modes):
            if with_tf32 and not on_cuda:
                log.info("drift in tf32 skipped: TF32 exists only on CUDA and the net is on CPU")
                continue
            if dtype not in converted:
                # .to() is in place on modules: cast a copy so the trained net keeps its dtype.
                same = next(net.parameters()).dtype == dtype
                source = net if same else copy.deepcopy(net).to(dtype)
                # A net trained without branches (tv_* with branches=none) is used as it is.
                converted[dtype] = (source, reparameterize(source, allow_plain=True))
            source, plain = converted[dtype]
            with tf32(with_tf32):
                report = measure_drift(source, plain, inputs, allow_tf32=with_tf32)
            parts = ["drift", tag, "" if i == 0 else label]
            prefix = "/".join(p for p in parts if p)
            metrics.update(report.metrics(prefix=prefix + "/"))
            self.blocks[prefix] = report.blocks
        first_plain = converted[self.drift_modes[0][1]][1]
        return metrics, first_plain

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_init and trainer.is_global_zero:
            metrics, _ = self._drift(pl_module.net, self._batch(trainer), "init")
            self.metrics.update(metrics)
            _log_metrics(trainer, metrics)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        ema = next((c for c in trainer.callbacks if isinstance(c, EMA) and c.net is not None), None)
        # With an exponential moving average the average is what gets deployed.
        net = ema.net if ema is not None else pl_module.net
        inputs = self._batch(trainer)
        metrics, plain = self._drift(net, inputs, "")
        metrics.update(
            {
                "deploy/from_ema": float(ema is not None),
                "params/train": count_params(net),
                "params/deploy": count_params(plain),
                "macs/deploy": count_macs(plain, inputs.shape[-1], inputs.shape[1]),
            }
        )
        if self.evaluate_plain:
            # On the images the Trainer measures the multi-branch net on (val/acc beside
            # deploy/val/acc), also when debug=limit cuts the splits to a few batches.
            for stage in ("val", "test"):
                result = evaluate_like_trainer(plain, trainer, stage, pl_module.device)
                if result is not None:
                    metrics[f"deploy/{stage}/acc"] = result["acc"]
                    metrics[f"deploy/{stage}/loss"] = result["loss"]
        self.plain_net = plain
        self.metrics.update(metrics)
        _log_metrics(trainer, metrics)
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.output_dir / "drift_blocks.json", self.blocks)
            if self.save:
                meta = plain_metadata(plain, **describe(pl_module))
                save_weights(plain, self.output_dir / "plain.safetensors", meta)
        log.info(
            "re-parameterized: drift vs fp64 %.2e (multi-branch %.2e), top-1 agreement %.4f",
            metrics["drift/vs_fp64/deploy_rel_max"],
            metrics["drift/vs_fp64/train_rel_max"],
            metrics["drift/top1_agree"],
        )


def describe(pl_module: pl.LightningModule) -> dict[str, Any]:
    """What the module's hyper-parameters say about the architecture (for weight metadata)."""
    hp = pl_module.hparams
    return {
        "model_name": hp.get("model_name"),
        "num_classes": hp.get("num_classes"),
        "in_channels": hp.get("in_channels"),
        "input_size": hp.get("input_size"),
        "model_kwargs": dict(hp.get("model_kwargs") or {}),
    }


def _log_metrics(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
