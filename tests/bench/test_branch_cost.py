"""The branch-cost section: its memory counter counts what autograd keeps (once per storage,
parameters left out), and a tiny run writes every documented key. No timing is asserted."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from repvgg_lab import add_branches
from repvgg_lab.bench import keys as k
from repvgg_lab.bench.branch_cost import bench_branch_cost_section, saved_tensor_bytes
from repvgg_lab.bench.result import Run
from repvgg_lab.bench.settings import PROFILES


class Square(nn.Module):
    """(x * x) * w: the first product saves x twice (one storage), the second saves the product
    and the parameter w."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * x) * self.w


def test_the_counter_dedupes_storages_and_leaves_parameters_out() -> None:
    x = torch.randn(3, 5, requires_grad=True)
    assert saved_tensor_bytes(Square(), x) == 2 * x.nbytes
    relu = nn.Sequential(nn.Linear(5, 8), nn.ReLU())
    # Linear keeps its input (its weight is a parameter); ReLU keeps its 3 x 8 output.
    assert saved_tensor_bytes(relu, x) == x.nbytes + 3 * 8 * 4
    with torch.no_grad():
        assert saved_tensor_bytes(relu, x) == 0


def test_an_online_conv_keeps_its_input_and_one_kernel() -> None:
    """The composition (pooling and 1x1 -> kxk kernels) is recomputed in backward, not kept."""
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    block = add_branches(nn.Sequential(conv, nn.BatchNorm2d(16)), "dbb", mode="online")[0]
    x = torch.randn(2, 8, 10, 10)
    assert saved_tensor_bytes(block, x) == x.nbytes + conv.weight.nbytes


def test_a_tiny_run_writes_every_key() -> None:
    s = replace(
        PROFILES["smoke"],
        branch_nets=("tv_resnet18", "repvgg_a0"),
        branch_sets=("repvgg", "acb"),
        branch_sizes=(16, 8),
        branch_threads=1,  # two threads on a busy two-core machine only wait for each other
    )
    run = Run()
    bench_branch_cost_section(s, run)
    m = run.metrics
    cases = [("tv_resnet18", b) for b in s.branch_sets] + [("repvgg_a0", "repvgg")]
    for net, branches in cases:
        for mode in s.branch_modes:
            for stat in ("time_over_plain", "memory_over_plain"):
                for key in (stat, f"{stat}_8px"):
                    value = m.pop(k.branch_cost_key(net, branches, mode, key))
                    assert math.isfinite(value) and value > 0
            assert len(run.details[k.branch_cost_window(net, branches, mode, 16)]["plain"]) > 0
    for net in s.branch_nets:
        assert m.pop(k.branch_plain_key(net, "saved_mb")) > m.pop(
            k.branch_plain_key(net, "saved_mb_8px")
        )
    assert m == {}  # nothing else, e.g. no acb on the registry RepVGG
