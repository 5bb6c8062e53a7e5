"""The int8 study: every run of `python train.py -m sweep=quant` quantized in ONNX Runtime.

Per run (RepVGG-A0 or QARepVGG-A0, one seed): the plain net's fp32 test accuracy; PTQ with
each calibration method and per-channel or per-tensor weights (test accuracy, agreement with
fp32, the worst layer's SQNR); QAT with per-tensor weights; the three worst layers with their
weight-outlier measures. Plus int8 speed of plain repvgg_a0 at 224x224 in ONNX Runtime."""

from __future__ import annotations

import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from repvgg_lab.data import DigitsDataModule
from repvgg_lab.deploy import load_source
from repvgg_lab.models import create_model, list_models, reparameterize
from repvgg_lab.quant import QuantOptions, int8_deploy, int8_latency, layer_report, qat_finetune
from repvgg_lab.quant.ptq import quantize_onnx
from repvgg_lab.results import markdown_table
from repvgg_lab.runtime.export import export_onnx
from repvgg_lab.studies.common import run_config
from repvgg_lab.utils import count_params

log = logging.getLogger(__name__)

METHODS = ("minmax", "percentile", "entropy")
VARIANTS = [(m, pc) for m in METHODS for pc in (True, False)]
CALIBRATION_BATCHES = 16
QAT_EPOCHS = 2
FORMS = ("train", "deploy")


def _variant(method: str, per_channel: bool) -> str:
    return f"{method}/{'per_channel' if per_channel else 'per_tensor'}"


def run_settings(run_dir: Path) -> tuple[str, int]:
    """(model name, seed) of a sweep run, from its saved Hydra config."""
    cfg = run_config(run_dir)
    if not cfg:
        raise FileNotFoundError(f"{run_dir}: no .hydra/config.yaml")
    return cfg["model"]["model_name"], int(cfg["seed"])


def _data(img_size: int, in_channels: int) -> dict[str, Any]:
    """Calibration images (training split) and the whole test split of the digits data."""
    dm = DigitsDataModule(img_size=img_size, in_channels=in_channels)
    dm.setup()
    calibration = dm.fixed_batch("train", CALIBRATION_BATCHES * dm.batch_size)[0]
    return {"dm": dm, "calibration": calibration, "test": dm.fixed_batch("test", None)}


def _ptq(plain: Any, data: dict[str, Any], folder: Path) -> dict[str, dict[str, float]]:
    out = {}
    for method, per_channel in VARIANTS:
        options = QuantOptions(method=method, per_channel=per_channel)
        m = int8_deploy(plain, folder, data["calibration"], *data["test"], options)
        out[_variant(method, per_channel)] = {
            "acc": m["quant/int8/test/acc"],
            "top1_agree": m["quant/int8/top1_agree"],
            "worst_sqnr_db": m["quant/int8/worst_sqnr_db"],
        }
        out["fp32"] = {"acc": m["quant/fp32/test/acc"]}
    return out


def study_run(run_dir: Path) -> dict[str, Any]:
    """The whole study of one sweep run."""
    model, seed = run_settings(run_dir)
    src = load_source(run_dir / "checkpoints" / "last.ckpt")
    plain = src.plain.float().eval()
    data = _data(src.input_size or 32, src.in_channels)
    with tempfile.TemporaryDirectory() as tmp:
        record = _ptq(plain, data, Path(tmp))
        per_tensor = QuantOptions(per_channel=False)
        torch.manual_seed(seed)
        tuned = qat_finetune(
            plain,
            data["dm"].train_dataloader(),
            QAT_EPOCHS,
            1e-4,
            per_tensor,
            calibration_images=data["calibration"],
        )
        m = int8_deploy(
            tuned,
            Path(tmp),
            data["calibration"],
            *data["test"],
            per_tensor,
            reference=plain,
            prefix="quant/qat",
        )
    layers = layer_report(plain, data["calibration"][:64], QuantOptions(per_channel=False))
    keys = ("name", "sqnr_db", "weight_max_over_std", "channel_range_ratio", "input_max", "cause")
    log.info(
        "%s seed %d: fp32 %.4f, QAT %.4f",
        model,
        seed,
        record["fp32"]["acc"],
        m["quant/qat/test/acc"],
    )
    return {
        "run": run_dir.name,
        "model": model,
        "seed": seed,
        "ptq": record,
        "qat": {"acc": m["quant/qat/test/acc"], "top1_agree": m["quant/qat/top1_agree"]},
        "worst_layers": [{k: row[k] for k in keys} for row in layers[:3]],
    }


def int8_speed(size: int = 224, batches: tuple[int, ...] = (1, 8), rounds: int = 7) -> dict:
    """ONNX Runtime fp32 and int8 latency of plain repvgg_a0 (random weights and calibration:
    speed does not depend on them)."""
    torch.manual_seed(0)
    plain = reparameterize(create_model("repvgg_a0").eval())
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        x = torch.randn(8, 3, size, size)
        export_onnx(plain, fp32, x[:2])
        quantize_onnx(fp32, int8, x, QuantOptions(calibration_batches=2))
        return int8_latency(fp32, int8, size, batches, rounds=rounds, warmup=2)


def param_counts() -> dict[str, dict[str, int]]:
    """Train- and deploy-form parameter counts of every QARepVGG variant (1000 classes)."""
    names = [n for n in list_models() if n.startswith("qarepvgg_")]
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return {
            n: {form: count_params(create_model(n, deploy=form == "deploy")) for form in FORMS}
            for n in names
        }


def run(sweep_dir: Path, speed: bool = True) -> dict[str, Any]:
    """Every run under `sweep_dir` (folders with a checkpoint), then the speed measurement
    and the QARepVGG parameter counts."""
    runs = sorted(p.parent.parent for p in sweep_dir.glob("*/checkpoints/last.ckpt"))
    if not runs:
        raise FileNotFoundError(f"{sweep_dir}: no run folder with checkpoints/last.ckpt")
    return {
        "runs": [study_run(r) for r in runs],
        "speed": int8_speed() if speed else {},
        "params": param_counts(),
    }


# ----------------------------------------------------------------------------- rendering


def _spread(values: list[float]) -> str:
    """Median [min–max] in percent, over seeds."""
    pct = [100 * v for v in values]
    return f"{statistics.median(pct):.1f} [{min(pct):.1f}–{max(pct):.1f}]"


def _by_model(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    models: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        models.setdefault(r["model"], []).append(r)
    return models


def render_accuracy(record: dict[str, Any]) -> str:
    """Test accuracy (%) of fp32, each PTQ variant and QAT: median [min–max] over seeds."""
    models = _by_model(record["results"]["runs"])
    header = ["variant", *(f"{m} ({len(rs)} seeds)" for m, rs in models.items())]
    rows = [["fp32", *(_spread([r["ptq"]["fp32"]["acc"] for r in rs]) for rs in models.values())]]
    for method, per_channel in VARIANTS:
        v = _variant(method, per_channel)
        rows.append(
            [f"PTQ {v}", *(_spread([r["ptq"][v]["acc"] for r in rs]) for rs in models.values())]
        )
    rows.append(
        ["QAT per_tensor", *(_spread([r["qat"]["acc"] for r in rs]) for rs in models.values())]
    )
    return "\n".join(markdown_table(header, rows))


def render_drop(record: dict[str, Any]) -> str:
    """Median int8 drop (points) against each run's own fp32, per variant and model."""
    models = _by_model(record["results"]["runs"])
    header = ["variant", *models]
    rows = []
    for method, per_channel in VARIANTS:
        v = _variant(method, per_channel)
        drops = [
            [100 * (r["ptq"]["fp32"]["acc"] - r["ptq"][v]["acc"]) for r in rs]
            for rs in models.values()
        ]
        cells = [f"{statistics.median(d):+.2f}" for d in drops]
        rows.append([v, *cells])
    return "\n".join(markdown_table(header, rows))


def render_layers(record: dict[str, Any]) -> str:
    """The worst int8 layer of each run (per-tensor weights) with its outlier measures."""
    header = ["model", "seed", "layer", "SQNR dB", "max\\|w\\|/std", "channel range ratio", "cause"]
    rows = [
        [
            r["model"],
            r["seed"],
            w["name"],
            f"{w['sqnr_db']:.1f}",
            f"{w['weight_max_over_std']:.0f}",
            f"{w['channel_range_ratio']:.1f}",
            w["cause"].replace("|", "\\|"),  # a Markdown cell cannot hold a bare pipe
        ]
        for r in record["results"]["runs"]
        for w in r["worst_layers"][:1]
    ]
    return "\n".join(markdown_table(header, rows))


def render_speed(record: dict[str, Any]) -> str:
    """int8 vs fp32 ONNX Runtime latency of plain repvgg_a0 at 224x224."""
    speed = record["results"]["speed"]
    batches = sorted({int(k.split("/")[2][1:]) for k in speed})
    rows = [
        [
            b,
            f"{speed[f'quant/latency/b{b}/fp32_ms']:.1f}",
            f"{speed[f'quant/latency/b{b}/int8_ms']:.1f}",
            f"{speed[f'quant/latency/b{b}/int8_over_fp32']:.2f}x",
        ]
        for b in batches
    ]
    threads = record["machine"]["threads"]
    lines = markdown_table(["batch", "fp32 ms", "int8 ms", "int8 / fp32"], rows)
    return "\n".join([*lines, "", f"{record['machine']['cpu']}, {threads} threads."])


def render_params(record: dict[str, Any]) -> str:
    """QARepVGG parameter counts, train and deploy form (1000 classes)."""
    params = record["results"]["params"]
    rows = [[n, f"{p['train']:,}", f"{p['deploy']:,}"] for n, p in params.items()]
    return "\n".join(markdown_table(["model", "train form", "deploy form"], rows))
