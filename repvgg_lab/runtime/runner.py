"""The nets a check compares, as functions of an image batch: a PyTorch net in eval mode with
exact fp32 (or a float64 copy, made once), and an ONNX Runtime CPU session."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from repvgg_lab.runtime.export import ONNX_INPUT
from repvgg_lab.utils import evaluating, exact_fp32

# x86 CPUs without VNNI run ONNX Runtime's u8 x s8 integer kernels on vpmaddubsw, which adds
# adjacent products in int16 with saturation; the int8 answers then depend on the CPU (on the
# digits net of the tests, emulated: up to 66 of 269 images lost with per-channel weights).
# With this entry ONNX Runtime computes weights outside [-64, 63] in u8 x u8 there, exactly. On
# VNNI CPUs the default kernels accumulate in int32 and are already exact (the same outputs
# bit for bit), and the entry would only slow them down, so it is set where VNNI is missing.
EXACT_INT8 = ("session.x64quantprecision", "1")
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})


@functools.cache
def cpu_has_vnni(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU has AVX-512 VNNI or AVX-VNNI (read from Linux's cpuinfo flags; False
    where they cannot be read, so int8 stays exact there)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return bool(VNNI_FLAGS & set(flags.split()))


def torch_fn(net: nn.Module, dtype: torch.dtype | None = None) -> Callable[[Tensor], Tensor]:
    """`net` as a function of a batch: eval mode, no grad, TF32 off, the input moved to the
    net's device and dtype. With a `dtype` other than the net's, a copy in that dtype is made
    here, once (e.g. the float64 truth), and `net` itself is left as it was."""
    if dtype is not None and dtype != next(net.parameters()).dtype:
        net = copy.deepcopy(net).to(dtype)
    param = next(net.parameters())

    @torch.no_grad()
    def forward(x: Tensor) -> Tensor:
        with exact_fp32(), evaluating(net):
            return net(x.to(device=param.device, dtype=param.dtype))

    return forward


def run_torch(net: nn.Module, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """One eval-mode forward of `net` on `x` (see `torch_fn`)."""
    return torch_fn(net, dtype)(x)


class OnnxRunner:
    """An ONNX Runtime CPU session over an exported model, called like a module on tensors;
    int8 models compute exactly on every x86 CPU (`EXACT_INT8` where the CPU lacks VNNI)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Same thread count as PyTorch so the latency comparison is like for like.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        if not cpu_has_vnni():
            options.add_session_config_entry(*EXACT_INT8)
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {ONNX_INPUT: x})[0]

    def __call__(self, x: Tensor) -> Tensor:
        return torch.from_numpy(self.run_numpy(x.detach().to(torch.float32).cpu().numpy()))
