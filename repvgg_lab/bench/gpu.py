"""GPU speed: training images/s (fp32; bf16 autocast + channels_last) and plain-net inference
images/s in fp16/bf16 beside the measured matmul peak of each dtype."""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from repvgg_lab.bench import keys as k
from repvgg_lab.bench.latency import net_forms
from repvgg_lab.bench.result import Run
from repvgg_lab.bench.settings import Settings
from repvgg_lab.models import create_model
from repvgg_lab.utils import count_macs, exact_fp32, measure_latency


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, n: int, rounds: int) -> float:
    """Median TFLOP/s of an n x n matmul in `dtype` on `device`."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    def mm() -> None:
        """One synchronized matmul."""
        torch.mm(a, b)
        _sync(device)

    r = measure_latency({"mm": mm}, rounds=rounds, warmup=2)
    return 2 * n**3 / r["mm"]["median_ms"] / 1e9


def _train_step_fn(
    name: str, s: Settings, device: torch.device, bf16_cl: bool, compiled: bool = False
) -> Callable[[], None]:
    """A function running `gpu_steps` SGD steps on synthetic images, synchronized at the end;
    `compiled`: the net under torch.compile (s.compile_backend), as `compile=true` trains."""
    torch.manual_seed(0)
    net = create_model(name).to(device).train()
    forward = torch.compile(net, backend=s.compile_backend) if compiled else net
    x = torch.randn(s.gpu_train_batch, 3, s.gpu_size, s.gpu_size, device=device)
    y = torch.randint(0, 1000, (s.gpu_train_batch,), device=device)
    if bf16_cl:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    autocast = functools.partial(
        torch.autocast, device_type=device.type, dtype=torch.bfloat16, enabled=bf16_cl
    )

    def steps() -> None:
        """`gpu_steps` optimizer steps, synchronized at the end."""
        for _ in range(s.gpu_steps):
            with autocast():
                loss = F.cross_entropy(forward(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)

    return steps


def _infer_fn(plain: nn.Module, s: Settings, device: torch.device, dtype: torch.dtype) -> Any:
    """A function running one channels_last inference batch of `plain` in `dtype`, synchronized."""
    net = copy.deepcopy(plain).to(device=device, dtype=dtype, memory_format=torch.channels_last)
    x = torch.randn(s.gpu_infer_batch, 3, s.gpu_size, s.gpu_size, device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)

    def infer() -> None:
        """One synchronized inference batch."""
        with torch.inference_mode():
            net(x)
        _sync(device)

    return infer


@contextlib.contextmanager
def cudnn_autotune() -> Iterator[None]:
    """cuDNN autotuning on for the duration (fixed shapes, as a user would set it)."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _bench_gpu_model(
    model: str, s: Settings, device: torch.device, peaks: dict[str, float], run: Run
) -> None:
    """Training and plain-net inference images/s of one model."""
    m = run.metrics
    fns = {
        "fp32": _train_step_fn(model, s, device, bf16_cl=False),
        "bf16_cl": _train_step_fn(model, s, device, bf16_cl=True),
    }
    if s.compile_backend and s.gpu_compile:
        fns["bf16_cl_compiled"] = _train_step_fn(model, s, device, bf16_cl=True, compiled=True)
    # Two warm-up rounds: the compiled form compiles in its first call.
    r = measure_latency(fns, rounds=s.gpu_rounds, warmup=2)
    for mode, res in r.items():
        images = s.gpu_train_batch * s.gpu_steps
        m[k.gpu_train_key(model, mode)] = images / res["median_ms"] * 1e3
    del fns
    _, plain = net_forms(model, s.gpu_size)
    macs = count_macs(plain, s.gpu_size)
    fns = {dtype: _infer_fn(plain, s, device, DTYPES[dtype]) for dtype in ("fp16", "bf16")}
    r = measure_latency(fns, rounds=s.gpu_rounds, warmup=2)
    for dtype, res in r.items():
        rate = s.gpu_infer_batch / res["median_ms"] * 1e3
        tflops = 2 * macs * rate / 1e12
        m[k.gpu_infer_key(model, dtype, "images_per_s")] = rate
        m[k.gpu_infer_key(model, dtype, "tflops")] = tflops
        m[k.gpu_infer_key(model, dtype, "over_peak")] = tflops / peaks[dtype]


def bench_gpu_section(s: Settings, run: Run, device: torch.device | str = "cuda") -> None:
    """Matmul peaks, then each model's training and inference speed. TF32 off (fp32 numbers must
    be fp32), cuDNN autotuning on. Written for CUDA; `device="cpu"` only exercises the code."""
    device = torch.device(device)
    with exact_fp32(), cudnn_autotune(), run.window(k.GPU_WINDOW):
        peaks = {
            dtype: matmul_peak_tflops(device, DTYPES[dtype], s.gpu_matmul_size, s.gpu_rounds)
            for dtype in DTYPES
        }
        for dtype, tflops in peaks.items():
            run.metrics[k.gpu_peak_key(dtype)] = tflops
        for model in s.gpu_models:
            _bench_gpu_model(model, s, device, peaks, run)
    if device.type == "cuda":
        torch.cuda.empty_cache()
