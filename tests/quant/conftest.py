"""A small RepVGG trained on digits for a few epochs (once per session), its plain form with and
without a planted outlier, real digits batches, and the fp32 ONNX export shared by the int8
tests. The net is trained on the CPU that runs the tests, so its weights (and every int8 number
measured on it) differ from machine to machine: the margins in `tests/quant/margins.py` say how
much."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from repvgg_lab.data import DigitsDataModule
from repvgg_lab.models.plain import PlainNet
from repvgg_lab.quant import as_plain, plant_outlier
from repvgg_lab.runtime.export import export_onnx
from tests.helpers.digits_net import (
    IMG,
    PLANT_K,
    PLANT_LAYER,
    digits_module,
    train_digits,
    widest_channel,
)


@pytest.fixture(scope="session")
def digits() -> DigitsDataModule:
    return digits_module()


@pytest.fixture(scope="session")
def trained_plain() -> PlainNet:
    """The trained digits net as a PlainNet (re-parameterized)."""
    with torch.random.fork_rng():
        return as_plain(train_digits())


@pytest.fixture(scope="session")
def planted(trained_plain: PlainNet) -> PlainNet:
    """`trained_plain` with its widest channel of layer PLANT_LAYER scaled by PLANT_K (same
    fp32 function; per-tensor int8 weights and activations of that layer 50x coarser)."""
    return plant_outlier(trained_plain, PLANT_LAYER, widest_channel(trained_plain), PLANT_K)


@pytest.fixture(scope="session")
def test_split(digits: DigitsDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole digits test split (269 images)."""
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
