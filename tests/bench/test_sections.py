"""Section code that the CPU smoke run does not reach: a failing compiler, the GPU section."""

from __future__ import annotations

import math

import pytest
import torch

from repvgg_lab.bench import keys as k
from repvgg_lab.bench.convert import require_in_timm
from repvgg_lab.bench.gpu import bench_gpu_section
from repvgg_lab.bench.latency import compile_net, net_forms
from repvgg_lab.bench.result import Run
from repvgg_lab.bench.settings import PROFILES
from repvgg_lab.reparam import rel_max

SMOKE = PROFILES["smoke"]


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_failed_compile_is_recorded_not_raised() -> None:
    call, seconds, error = compile_net(torch.nn.Linear(2, 2), torch.randn(1, 2), "no_such")
    assert call is None and seconds >= 0
    assert error is not None and error.startswith("InvalidBackend") and "no_such" in error


def test_net_forms_are_deterministic_and_equivalent() -> None:
    source, plain = net_forms("repvgg_a0", 32)
    again, _ = net_forms("repvgg_a0", 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(x), again(x))
        assert rel_max(source(x), plain(x)) < 1e-4


def test_conversion_needs_a_timm_twin() -> None:
    require_in_timm("repvgg_a0")
    with pytest.raises(ValueError, match="timm has no 'rmnet_resnet18'"):
        require_in_timm("rmnet_resnet18")


def test_gpu_section_code_path_runs_on_cpu() -> None:
    """The GPU section is written for CUDA; on CPU with tiny sizes it must still produce its keys
    (the only check it can get on a machine without a GPU)."""
    run = Run()
    bench_gpu_section(SMOKE, run, device="cpu")
    m = run.metrics
    for model in SMOKE.gpu_models:
        for mode in ("fp32", "bf16_cl"):
            assert _positive(m[k.gpu_train_key(model, mode)])
        for dtype in ("fp16", "bf16"):
            assert _positive(m[k.gpu_infer_key(model, dtype, "images_per_s")])
            assert _positive(m[k.gpu_infer_key(model, dtype, "over_peak")])
    assert all(_positive(m[k.gpu_peak_key(d)]) for d in ("fp32", "bf16", "fp16"))
    assert all(key.startswith(k.GPU_PREFIX) for key in m) and set(run.windows) == {k.GPU_WINDOW}
    assert torch.backends.cudnn.benchmark is False  # autotuning is switched on for the section only
