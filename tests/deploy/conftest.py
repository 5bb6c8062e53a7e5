"""Fixtures for the deploy tests: trained-like nets, checkpoints in each format, CLI runner."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from repvgg_lab import testing
from repvgg_lab.deploy.source import Source, save_plain
from repvgg_lab.models.plain import ChannelClamp, PlainLayer, PlainNet
from repvgg_lab.models.repvgg import Head
from tests.helpers.cli import run_script
from tests.helpers.contract import official_names

REPO = Path(__file__).resolve().parents[2]
NUM_CLASSES = 10
SIZE = 32  # input size of every test deploy: a0 at 32x32 costs ~30 MMACs per image


def trained_like(name: str = "repvgg_a0", seed: int = 0, **kwargs: Any) -> nn.Module:
    """A registry net with non-trivial BN statistics (fresh BN would hide fusion mistakes)."""
    return testing.trained_like(name, seed, num_classes=NUM_CLASSES, **kwargs)


def lightning_checkpoint(
    net: nn.Module, path: Path, model_name: str = "repvgg_a0", **hparams: Any
) -> Path:
    """A dict shaped like a Lightning checkpoint of our ClassifierModule."""
    hyper = {
        "model_name": model_name,
        "num_classes": NUM_CLASSES,
        "in_channels": 3,
        "input_size": SIZE,
        "model_kwargs": {},
        **hparams,
    }
    torch.save(
        {
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "2.6.6",
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "hyper_parameters": hyper,
            "optimizer_states": [],
            "lr_schedulers": [],
            "callbacks": {},
        },
        path,
    )
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python deploy.py ARGS` as a user runs it, from the repository root."""
    return run_script("deploy.py", *args, timeout=timeout)


@pytest.fixture(scope="module")
def a0() -> nn.Module:
    return trained_like("repvgg_a0")


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An output folder that already holds files a failed deploy must leave alone."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"sentinel: an earlier export")
    (folder / "report.json").write_text('{"earlier": true}\n')
    return folder


@pytest.fixture
def unchanged(out_dir: Path) -> Callable[[], None]:
    """Call after a failed deploy: asserts `out_dir` holds exactly what it held before."""
    before = snapshot(out_dir)

    def check() -> None:
        assert snapshot(out_dir) == before

    return check


# Helpers as fixtures: with --import-mode=importlib test modules cannot import conftest.
@pytest.fixture(scope="session")
def make_net() -> Callable[..., nn.Module]:
    return trained_like


@pytest.fixture(scope="session")
def save_lightning() -> Callable[..., Path]:
    return lightning_checkpoint


@pytest.fixture(scope="session")
def to_official() -> Callable[[dict], dict]:
    return official_names


@pytest.fixture(scope="session")
def cli() -> Callable[..., subprocess.CompletedProcess]:
    return run_cli


def clamp_net(in_channels: int = 1) -> PlainNet:
    """A small PlainNet with ReLU, ReLU6, max-pooling and mixed per-channel clamps (as RMNet
    conversions produce): fast to deploy, and its graph needs Max/Min/Clip."""
    torch.manual_seed(0)
    lower = torch.tensor([0.0, -float("inf"), 0.0, -1.0])
    upper = torch.tensor([6.0, float("inf"), float("inf"), 1.0])
    layers = [
        PlainLayer(nn.Conv2d(in_channels, 4, 3, padding=1), ChannelClamp(lower, upper)),
        PlainLayer(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU6()),
        PlainLayer(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2)),
    ]
    return PlainNet(layers, Head(8, NUM_CLASSES)).eval()


@pytest.fixture(scope="session")
def clamp_net_file() -> Callable[..., tuple[PlainNet, Path]]:
    """Writes a clamp net as our safetensors export would: (net, path)."""

    def write(folder: Path, in_channels: int = 1) -> tuple[PlainNet, Path]:
        net = clamp_net(in_channels)
        src = Source("rmnet_custom", NUM_CLASSES, in_channels, "test", net, input_size=SIZE)
        return net, save_plain(src, folder / f"clamp{in_channels}.safetensors")

    return write
