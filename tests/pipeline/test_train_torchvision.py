"""torchvision's resnet18 through the whole pipeline: trained with DBB branches (offline or
online) on digits, converted back into torchvision's own architecture at the end of training,
deployed and exported to an ONNX graph with torchvision resnet18's convs."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
import torchvision

from repvgg_lab.deploy import deploy
from repvgg_lab.deploy.source import load_source
from repvgg_lab.models import load_pretrained
from repvgg_lab.pipeline.train import train
from repvgg_lab.runtime.export import conv_weight_shapes, onnx_graph, op_counts
from tests.helpers.cli import run_script

from .test_train import SMALL

TV = ["model=tv_resnet18", "model.model_kwargs.branches=dbb"]
FAST_DEPLOY = {"batch_sizes": (1,), "rounds": 2, "warmup": 1, "verify_size": 32}


def _fresh_resnet18() -> torch.nn.Module:
    """torchvision's resnet18 for digits (10 classes, 3 channels), built fresh."""
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


def _conv_shapes(net: torch.nn.Module) -> list[tuple[int, ...]]:
    return sorted(tuple(m.weight.shape) for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def _check_deployed_graph(onnx_path: Path, report: dict) -> None:
    """The exported graph is torchvision resnet18's: its convs, its op types (Adds included)."""
    proto = onnx.load(str(onnx_path))
    shapes = conv_weight_shapes(proto)
    assert len(shapes) == 20 and sorted(shapes) == _conv_shapes(_fresh_resnet18())
    fresh = op_counts(onnx_graph(_fresh_resnet18(), torch.randn(2, 3, 16, 16)))
    assert op_counts(proto) == fresh == report["onnx_ops"] and fresh["Add"] == 8


def _check_run(run: Path, metrics: dict) -> None:
    """Conversion at the end of training: exact, per block too, into torchvision's resnet18."""
    assert metrics["drift/top1_agree"] == 1.0 and metrics["drift/vs_fp64/deploy_rel_max"] < 1e-5
    assert metrics["params/deploy"] == sum(p.numel() for p in _fresh_resnet18().parameters())
    assert metrics["params/train"] > metrics["params/deploy"]
    blocks = json.loads((run / "drift_blocks.json").read_text())["drift"]
    assert len(blocks) == 20 and max(b["deploy_rel_max"] for b in blocks.values()) < 1e-5
    # plain.safetensors loads strictly into a fresh torchvision resnet18.
    load_pretrained(_fresh_resnet18(), run / "plain.safetensors")


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_dbb_resnet18_trains_converts_and_deploys_as_torchvision_resnet18(
    compose_train, tmp_path: Path, mode: str
) -> None:
    metrics = train(
        compose_train(*TV, f"model.model_kwargs.branch_mode={mode}", *SMALL, "logger=none")
    )
    _check_run(tmp_path, metrics)
    out = tmp_path / "deploy"
    report = deploy(
        tmp_path / "checkpoints" / "last.ckpt", out_dir=out, verify_data="digits", **FAST_DEPLOY
    )
    assert report["source"]["model"] == "tv_resnet18" and not report["source"]["deploy_form"]
    m = report["metrics"]
    assert m["drift/vs_fp64/deploy_rel_max"] < 1e-5 and m["onnx/vs_fp64/rel_max"] < 1e-5
    assert m["verify/top1_agree/onnx"] == 1.0 and m["verify/images"] == 32
    _check_deployed_graph(out / "model.onnx", report)


def test_a_net_trained_without_branches_is_its_own_plain_form(compose_train, tmp_path) -> None:
    metrics = train(
        compose_train(*TV[:1], "model.model_kwargs.branches=none", *SMALL, "logger=none")
    )
    assert metrics["params/train"] == metrics["params/deploy"]
    assert metrics["drift/rel_max"] == 0.0 and metrics["drift/top1_agree"] == 1.0
    load_pretrained(_fresh_resnet18(), tmp_path / "plain.safetensors")
    src = load_source(tmp_path / "checkpoints" / "last.ckpt")
    assert src.deploy_form and src.trained is None  # nothing to convert: already plain


def test_pruning_a_torchvision_net_is_refused_before_training(compose_train, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train(compose_train(*TV, "prune=gates", *SMALL, "logger=none"))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: cannot prune tv_resnet18: ResNet has no PlainNet form; pruning supports RepVGG "
        "models (without SE) and PlainNet (e.g. RMNet's plain conversion)"
    ]
    assert not (tmp_path / "checkpoints").exists()  # nothing was trained


@pytest.mark.slow
def test_train_py_then_deploy_py_as_a_user_types_them(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = run_script("train.py", *TV, *SMALL, "logger=none", f"output_dir={run}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_run(run, json.loads((run / "metrics.json").read_text()))
    out = tmp_path / "deploy"
    proc = run_script(
        "deploy.py",
        f"ckpt={run}/checkpoints/last.ckpt",
        "verify.data=digits",
        f"out_dir={out}",
        "logger=none",
        "latency.batch_sizes=[1]",
        "latency.rounds=2",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_deployed_graph(out / "model.onnx", json.loads((out / "report.json").read_text()))
