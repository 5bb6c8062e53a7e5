"""Numeric checks of the exports: ONNX Runtime vs PyTorch vs the float64 truth, and real images."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from repvgg_lab.deploy.export import ONNX_INPUT
from repvgg_lab.errors import DeployError, InputError
from repvgg_lab.reparam import compare, rel_max, top1_agree
from repvgg_lab.utils import evaluating, exact_fp32

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


@torch.no_grad()
def run_torch(net: nn.Module, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Eval-mode forward, in `dtype` (a float64 copy of the net when asked) with TF32 off."""
    if dtype is not None and dtype != next(net.parameters()).dtype:
        net = copy.deepcopy(net).to(dtype)
    dtype = next(net.parameters()).dtype
    with exact_fp32(), evaluating(net):
        return net(x.to(dtype))


# x86 CPUs without VNNI run ONNX Runtime's u8 x s8 integer kernels on vpmaddubsw, which adds
# adjacent products in int16 with saturation; the int8 answers then depend on the CPU (on the
# digits net of the tests, emulated: up to 66 of 269 images lost with per-channel weights).
# With this entry ONNX Runtime computes weights outside [-64, 63] in u8 x u8 there, exactly;
# on VNNI CPUs (and for float models) it changes nothing.
EXACT_INT8 = ("session.x64quantprecision", "1")


class OnnxRunner:
    """An ONNX Runtime CPU session over an exported model, called like a module on tensors;
    int8 models compute exactly on every x86 CPU (`EXACT_INT8`)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Same thread count as PyTorch so the latency comparison is like for like.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry(*EXACT_INT8)
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {ONNX_INPUT: x})[0]

    def __call__(self, x: Tensor) -> Tensor:
        return torch.from_numpy(self.run_numpy(x.detach().to(torch.float32).cpu().numpy()))


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


def real_batches(
    data: str,
    root: str | None,
    input_size: int,
    in_channels: int,
    sizes: Mapping[str, int | None],
) -> dict[str, tuple[Tensor, Tensor]]:
    """For each split in `sizes` ("train", "val", ...), that many images and labels (eval
    transforms; None: the whole split) from the `digits` or `imagenet` data module, which is
    set up once."""
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
        batches = {split: module.fixed_batch(split=split, size=n) for split, n in sizes.items()}
    except (InputError, FileNotFoundError, ValueError) as err:
        # The data modules report a bad root or option as a ValueError (DataRootError).
        raise DeployError(f"verify.data={data}: {err}") from None
    wrong = {x.shape[1] for x, _ in batches.values()} - {in_channels}
    if wrong:
        raise DeployError(
            f"verify.data={data} gives {wrong.pop()}-channel images but the net takes {in_channels}"
        )
    return batches


def check_real_images(
    outputs: dict[str, Tensor], truth: Tensor, labels: Tensor
) -> dict[str, float]:
    """Top-1 agreement of each output with the float64 truth, and accuracy on the labels."""
    metrics: dict[str, float] = {"verify/images": int(labels.shape[0])}
    for name, y in outputs.items():
        metrics[f"verify/top1_agree/{name}"] = top1_agree(truth, y)
        metrics[f"verify/acc/{name}"] = float((y.argmax(dim=1) == labels).double().mean())
    return metrics
