"""The GPU check: what only a GPU can tell, in one short run that writes one JSON.

Training images/s of repvgg_a0 and repvgg_b2g4 on synthetic 224x224 images in fp32, bf16 +
channels_last and compiled (the benchmark's GPU section), the branch cost of online and offline
DBB on resnet18 in bf16 at 224 px (the benchmark's branch_cost section), and conversion drift
with TF32 on and off (TF32 must be off for drift checks: this shows by how much it would blur them).
`scripts/gpu_check.sh` runs it after the `gpu`-marked tests; `dry_run` does the same on the
CPU with tiny sizes, so the test suite keeps the code honest where no GPU is."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from repvgg_lab.bench import keys as k
from repvgg_lab.bench.branch_cost import bench_branch_cost_section
from repvgg_lab.bench.gpu import bench_gpu_section
from repvgg_lab.bench.result import Run
from repvgg_lab.bench.settings import PROFILES, Settings
from repvgg_lab.models import measure_drift, reparameterize
from repvgg_lab.testing import trained_like

log = logging.getLogger(__name__)

GPU_CHECK = dataclasses.replace(PROFILES["quick"], gpu_compile=True)
DRY_RUN = dataclasses.replace(PROFILES["smoke"], gpu_compile=True)
DRIFT_MODELS = ("repvgg_a0", "repvgg_b2g4")


def tf32_drift(model: str, device: torch.device, size: int, batch: int) -> dict[str, float]:
    """deploy_rel_max (plain fp32 vs float64 truth) with TF32 off and on, and the multi-branch
    net's own fp32 error beside it, on one trained-like net and batch."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    source = trained_like(model, seed=0, inputs=x[:2]).to(device)
    plain = reparameterize(source)
    exact = measure_drift(source, plain, x, per_block=False)
    tf32 = measure_drift(source, plain, x, per_block=False, allow_tf32=True)
    return {
        k.tf32_key(model, "train_rel_max"): exact.train_rel_max,
        k.tf32_key(model, "deploy_rel_max_tf32_off"): exact.deploy_rel_max,
        k.tf32_key(model, "deploy_rel_max_tf32_on"): tf32.deploy_rel_max,
    }


def branch_cost_settings(settings: Settings) -> Settings:
    """The benchmark's branch-cost measurement at its first size (224 px in the check), for
    resnet18 with DBB branches, offline and online: seconds on a GPU."""
    return dataclasses.replace(
        settings,
        branch_nets=("tv_resnet18",),
        branch_sets=("dbb",),
        branch_sizes=settings.branch_sizes[:1],
    )


def run_gpu_check(device: str = "cuda", settings: Settings = GPU_CHECK) -> dict[str, Any]:
    """The whole check on `device`; metrics and the device description."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: run the check with --dry-run on a CPU")
    run = Run()
    bench_gpu_section(settings, run, dev)
    for model in DRIFT_MODELS[: 1 if settings is DRY_RUN else None]:
        log.info("TF32 drift: %s", model)
        run.metrics.update(tf32_drift(model, dev, settings.gpu_size, 8))
    log.info("train-time branch cost, bf16")
    bench_branch_cost_section(branch_cost_settings(settings), run, dev, torch.bfloat16)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (dry run)"
    return {"device": name, "metrics": run.metrics, "windows": run.windows}
