"""Comparison metrics: relative error, top-1 agreement, underflow, per-dtype tolerances."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from repvgg_lab.reparam import compare, max_abs, rel_max, tolerance, top1_agree, underflow_fraction


def test_tolerances_grow_as_precision_drops() -> None:
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
    values = [tolerance(d) for d in dtypes]
    assert values == sorted(values) and len(set(values)) == len(values)
    # Each tolerance sits well above the dtype's unit roundoff (a net accumulates many roundings)
    # and well below 1 (a broken conversion is off by O(1)).
    for dtype, tol in zip(dtypes, values, strict=True):
        assert 10 * torch.finfo(dtype).eps < tol < 0.5
    assert tolerance(torch.int8) == tolerance(torch.float32)  # unknown dtypes get the fp32 default


def test_max_abs_is_computed_in_float64() -> None:
    # In fp16 the difference 120000 overflows to inf; the metric must not.
    ref = torch.tensor([60000.0], dtype=torch.float16)
    out = torch.tensor([-60000.0], dtype=torch.float16)
    assert max_abs(ref, out) == 120000.0  # 60000 is exact in fp16; their difference is not
    big = torch.tensor([2.0**25], dtype=torch.float32)
    assert max_abs(big, big + 4) == 4.0


def test_rel_max_by_hand() -> None:
    ref, out = torch.tensor([[1.0, -4.0]]), torch.tensor([[1.5, -4.0]])
    assert rel_max(ref, out) == 0.125  # 0.5 / 4
    assert rel_max(torch.zeros(3), torch.zeros(3)) == 0.0
    assert math.isinf(rel_max(torch.zeros(3), torch.tensor([0.0, 1e-30, 0.0])))


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**16), exponent=st.integers(-60, 60))
def test_rel_max_is_scale_invariant(seed, exponent):
    gen = torch.Generator().manual_seed(seed)
    ref = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    out = ref + 1e-3 * torch.randn(5, 7, generator=gen, dtype=torch.float64)
    c = 2.0**exponent  # a power of two scales exactly
    assert rel_max(ref * c, out * c) == rel_max(ref, out)
    assert rel_max(ref, out) == max_abs(ref, out) / float(ref.abs().max())


def test_top1_agree_counts_matching_rows() -> None:
    ref = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    out = torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 9.0]])
    assert top1_agree(ref, out) == 0.5
    assert top1_agree(ref, ref) == 1.0
    assert top1_agree(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0])) == 1.0  # no class dim


def test_underflow_fraction_counts_nonzero_values_fp32_cannot_hold() -> None:
    tiny32 = torch.finfo(torch.float32).tiny
    ref = torch.tensor([1.0, 1e-39, 0.0, 1e-50, -1e-40, tiny32, -tiny32], dtype=torch.float64)
    # Six non-zero values; 1e-39, 1e-50 and -1e-40 are below fp32's smallest normal.
    assert underflow_fraction(ref) == pytest.approx(3 / 6)
    assert underflow_fraction(torch.zeros(4, dtype=torch.float64)) == 0.0
    assert underflow_fraction(torch.randn(100, dtype=torch.float64)) == 0.0


def test_underflow_threshold_follows_the_dtype() -> None:
    ref = torch.tensor([1e-6, 1.0, 1e-3, 1e-30], dtype=torch.float64)
    assert underflow_fraction(ref, torch.float16) == 0.5  # fp16's smallest normal is 6.1e-5
    assert underflow_fraction(ref, torch.float32) == 0.0
    assert underflow_fraction(ref, torch.bfloat16) == 0.0  # bf16 has fp32's exponent range


def test_compare_bundles_the_three_metrics() -> None:
    ref = torch.tensor([[3.0, 1.0], [0.0, 2.0]])
    out = torch.tensor([[1.0, 2.0], [0.0, 2.5]])
    assert compare(ref, out) == {
        "max_abs": 2.0,
        "rel_max": 2.0 / 3.0,
        "top1_agree": 0.5,
    }
