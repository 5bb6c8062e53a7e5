"""What train-time branches cost: one training step of a branched net against its plain net, for
each branch set in both layouts (offline: a BN per branch; online: OREPA's one kernel).

Time is the median over alternated rounds of (branched step) / (plain step), one step being
forward, backward and an SGD step with momentum 0.9, in train mode. Memory is the bytes of the
non-parameter tensors autograd saves for backward in one forward pass, counted once per storage
(`saved_tensor_bytes`): the activations a step has to keep, which is what the branches multiply.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from repvgg_lab.bench.keys import branch_cost_key, branch_cost_window, branch_plain_key
from repvgg_lab.bench.result import Run
from repvgg_lab.bench.settings import Settings
from repvgg_lab.models import create_model
from repvgg_lab.utils import measure_latency, paired_ratio, torch_threads

log = logging.getLogger(__name__)
NUM_CLASSES = 10


def saved_tensor_bytes(model: nn.Module, x: Tensor) -> int:
    """Bytes of the storages autograd saves for backward during `model(x)`, parameters left
    out, each storage counted once however many saved tensors view it."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        """Note the saved tensor's storage; autograd keeps the tensor itself."""
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and storage.nbytes():
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    # The outputs hold the graph, so no saved storage is freed (and its address reused) before
    # the forward pass ends.
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(storages.values())


def branch_sets(net: str, s: Settings) -> tuple[str, ...]:
    """The sets measured on `net`: all of them for an ordinary net (add_branches), a registry
    RepVGG's own "repvgg" blocks for the RepVGG family."""
    return (
        s.branch_sets if net.startswith("tv_") else tuple(b for b in s.branch_sets if b == "repvgg")
    )


def build(net: str, branches: str | None, mode: str = "offline") -> nn.Module:
    """`net` in train mode: plain (`branches` None; a RepVGG's deploy form) or with branches."""
    torch.manual_seed(0)
    if net.startswith("tv_"):
        kwargs = {"branches": branches or "none", "branch_mode": mode}
        return create_model(net, num_classes=NUM_CLASSES, **kwargs).train()
    if branches is None:
        return create_model(net, num_classes=NUM_CLASSES, deploy=True).train()
    return create_model(net, num_classes=NUM_CLASSES, branch_mode=mode).train()


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """Autocast to `dtype` on `device`; no autocast when `dtype` is None."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _stepper(
    model: nn.Module, x: Tensor, y: Tensor, autocast: torch.dtype | None = None
) -> Callable[[], None]:
    """One training step of `model` on (x, y): forward (under autocast to `autocast` when
    given), backward, SGD with momentum 0.9; on CUDA it waits for the device to finish."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        """Forward, backward, optimizer step."""
        with _autocast(x.device, autocast):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    return step


def _measure_net(
    s: Settings,
    run: Run,
    net: str,
    size: int,
    suffix: str,
    device: torch.device,
    autocast: torch.dtype | None = None,
) -> None:
    """Every branch set and mode of `net` at `size` px against the plain net; keys end in
    `suffix` ("" for the first size on the CPU, which carries the targets)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(s.branch_batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, NUM_CLASSES, (s.branch_batch,), generator=gen).to(device)
    plain = build(net, None).to(device)
    with _autocast(device, autocast):
        plain_bytes = saved_tensor_bytes(plain, x)
    plain_step = _stepper(plain, x, y, autocast)
    run.metrics[branch_plain_key(net, "saved_mb" + suffix)] = plain_bytes / 2**20
    for branches in branch_sets(net, s):
        for mode in s.branch_modes:
            model = build(net, branches, mode).to(device)
            fns = {"plain": plain_step, "branched": _stepper(model, x, y, autocast)}
            with run.window(branch_cost_window(net, branches, mode, size)):
                times = measure_latency(fns, s.branch_rounds, s.branch_warmup)
            with _autocast(device, autocast):
                memory = saved_tensor_bytes(model, x) / plain_bytes
            time = paired_ratio(times, "branched", "plain")
            run.metrics[branch_cost_key(net, branches, mode, "time_over_plain" + suffix)] = time
            run.metrics[branch_cost_key(net, branches, mode, "memory_over_plain" + suffix)] = memory
            run.details[branch_cost_window(net, branches, mode, size)] = times
            log.info(
                "%s %s %s %d px: time %.2fx, memory %.2fx", net, branches, mode, size, time, memory
            )
            del model


def bench_branch_cost_section(
    s: Settings, run: Run, device: torch.device | str = "cpu", autocast: torch.dtype | None = None
) -> None:
    """Branch cost of each net at each size on `device` (CPU: on `branch_threads` threads),
    in fp32 or under autocast to `autocast`. On the CPU in fp32 the first size's keys carry no
    suffix (they hold the targets) and the others end in `_<size>px`; elsewhere every key ends
    in `_<size>px_<dtype>_<device>` (the GPU check's bf16 line)."""
    device = torch.device(device)
    plain_cpu = device.type == "cpu" and autocast is None
    branched_log = logging.getLogger("repvgg_lab.models.branched")
    level = branched_log.level
    branched_log.setLevel(logging.WARNING)  # one line per conv and net built: noise here
    try:
        with torch_threads(s.branch_threads if device.type == "cpu" else None):
            for i, size in enumerate(s.branch_sizes):
                suffix = "" if plain_cpu and i == 0 else f"_{size}px"
                if not plain_cpu:
                    suffix += f"_{str(autocast or torch.float32).removeprefix('torch.')}"
                    suffix += f"_{device.type}"
                for net in s.branch_nets:
                    _measure_net(s, run, net, size, suffix, device, autocast)
    finally:
        branched_log.setLevel(level)
