"""Numeric checks of the exports: ONNX Runtime vs PyTorch vs the float64 truth, and loaders of
real images to measure them on."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from repvgg_lab.errors import DeployError, InputError
from repvgg_lab.reparam import compare, rel_max
from repvgg_lab.runtime import OnnxRunner, run_torch

log = logging.getLogger(__name__)

VERIFY_DATA = ("digits", "imagenet")


def synthetic_batch(batch: int, in_channels: int, input_size: int, seed: int | None = 0) -> Tensor:
    """A fixed standard-normal batch (same seed, same batch) for drift checks."""
    gen = torch.Generator()
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    return torch.randn(batch, in_channels, input_size, input_size, generator=gen)


def rel_l2(ref: Tensor, out: Tensor) -> float:
    """||out - ref|| / ||ref|| in float64: the error of the whole output, steadier from batch to
    batch than the max-based `rel_max` when comparing two fp32 evaluations."""
    ref64 = ref.to(torch.float64)
    norm = float(ref64.norm())
    diff = float((out.to(torch.float64) - ref64).norm())
    if norm == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / norm


def check_onnx(
    runner: OnnxRunner,
    plain: nn.Module,
    x: Tensor,
    truth: Tensor,
    tolerance: float,
    other_shape: tuple[int, int, int, int] | None = None,
) -> dict[str, float]:
    """ONNX outputs vs PyTorch's plain net and vs the float64 truth on `x`; with `other_shape`,
    also proves the dynamic axes by comparing with PyTorch on an input of that shape."""
    y_onnx = runner(x)
    y_torch = run_torch(plain, x)
    pair = compare(y_torch, y_onnx)
    metrics = {
        "onnx/vs_fp64/rel_max": rel_max(truth, y_onnx),
        "onnx/vs_fp64/rel_l2": rel_l2(truth, y_onnx),
        "onnx/vs_torch/max_abs": pair["max_abs"],
        "onnx/vs_torch/rel_max": pair["rel_max"],
        "onnx/top1_agree": pair["top1_agree"],
    }
    if other_shape is not None:
        x2 = torch.randn(other_shape, generator=torch.Generator().manual_seed(1))
        y2, expected = runner(x2), run_torch(plain, x2)
        if y2.shape != expected.shape:
            raise DeployError(
                f"ONNX model maps an input of shape {other_shape} to {tuple(y2.shape)}, "
                f"PyTorch to {tuple(expected.shape)}: the dynamic axes do not work"
            )
        err = rel_max(expected, y2)
        if not err <= tolerance:
            raise DeployError(
                f"ONNX model disagrees with PyTorch on an input of shape {other_shape}: "
                f"max|err|/max|ref| {err:.3g} > {tolerance:g}"
            )
    return metrics


def check_verify_data(data: str | None, root: str | None) -> None:
    """Fail early on a verify.data choice that cannot work (before any conversion is done)."""
    if data is None:
        return
    if data not in VERIFY_DATA:
        raise DeployError(f"unknown verify.data={data!r}; expected one of {', '.join(VERIFY_DATA)}")
    if data == "imagenet" and not root:
        raise DeployError("verify.data=imagenet needs verify.root=<folder with train/ and val/>")


def real_loaders(
    data: str,
    root: str | None,
    input_size: int,
    in_channels: int,
    requests: Mapping[str, tuple[str, int | None]],
    batch: int,
    workers: int | None = None,
) -> dict[str, DataLoader]:
    """For each name in `requests`, mapped to (split, n), a loader of n evenly spaced images and
    labels of that split ("train", "val" or "test"; eval transforms; n None: the whole split) in
    batches of `batch`, decoded by `workers` processes (None: the data module's own count, at
    most the CPUs), from the `digits` or `imagenet` data module, set up once. A request for the
    test split that the validation split itself serves (an ImageNet folder without test/), in
    the same size as one for val, is left out: that folder is read once, as val."""
    check_verify_data(data, root)
    try:
        from repvgg_lab import data as datamodules
    except ImportError as err:
        raise DeployError(f"verify.data={data} needs repvgg_lab.data ({err})") from None
    try:
        if data == "digits":
            module: Any = datamodules.DigitsDataModule(img_size=input_size, in_channels=in_channels)
        else:
            module = datamodules.ImageNetDataModule(root=root, img_size=input_size)
        module.setup()
        if workers is None:
            workers = min(module.num_workers, os.cpu_count() or 1)
        vals = {n for split, n in requests.values() if split == "val"}
        loaders = {
            name: module.fixed_loader(split, n, batch, workers)
            for name, (split, n) in requests.items()
            if not (split == "test" and n in vals and module.same_samples("test", "val"))
        }
        channels = {int(loader.dataset[0][0].shape[0]) for loader in loaders.values()}
    except (InputError, FileNotFoundError, ValueError) as err:
        # The data modules report a bad root or option as a ValueError (DataRootError).
        raise DeployError(f"verify.data={data}: {err}") from None
    wrong = channels - {in_channels}
    if wrong:
        raise DeployError(
            f"verify.data={data} gives {wrong.pop()}-channel images but the net takes {in_channels}"
        )
    return loaders
