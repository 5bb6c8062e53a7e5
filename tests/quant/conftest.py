"""A small RepVGG trained on digits for a few epochs (once per session), its plain form, real
digits batches, and the fp32 ONNX export shared by the int8 tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repvgg_lab.data import DigitsDataModule
from repvgg_lab.deploy.export import export_onnx
from repvgg_lab.models import create_model
from repvgg_lab.models.plain import PlainNet
from repvgg_lab.quant import as_plain

IMG = 32
WIDTHS = (0.25, 0.25, 0.25, 0.5)


def digits_module(batch_size: int = 32) -> DigitsDataModule:
    """The digits data module of the default job (32x32, 3 channels, no augmentation), set up."""
    module = DigitsDataModule(img_size=IMG, batch_size=batch_size, in_channels=3, augment=False)
    module.setup()
    return module


def train_digits(epochs: int = 4, seed: int = 0, name: str = "repvgg_a0") -> nn.Module:
    """A narrow `name` trained on digits with the default job's SGD + cosine (plain loop)."""
    torch.manual_seed(seed)
    net = create_model(name, num_classes=10, widths=WIDTHS)
    loader = digits_module().train_dataloader()
    opt = torch.optim.SGD(net.parameters(), lr=0.0125, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    net.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@pytest.fixture(scope="session")
def digits() -> DigitsDataModule:
    return digits_module()


@pytest.fixture(scope="session")
def trained_plain() -> PlainNet:
    """The trained digits net as a PlainNet (re-parameterized)."""
    with torch.random.fork_rng():
        return as_plain(train_digits())


@pytest.fixture(scope="session")
def test_split(digits: DigitsDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole digits test split (270 images)."""
    return digits.fixed_batch("test", size=len(digits.splits.test))


@pytest.fixture(scope="session")
def calib(digits: DigitsDataModule) -> torch.Tensor:
    """256 training images (eval transforms) for calibration."""
    return digits.fixed_batch("train", size=256)[0]


@pytest.fixture(scope="session")
def fp32_onnx(trained_plain: PlainNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fp32") / "plain.onnx"
    export_onnx(trained_plain, path, torch.zeros(1, 3, IMG, IMG))
    return path
