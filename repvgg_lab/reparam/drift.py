"""Numeric comparison of two outputs: relative error, top-1 agreement, fp32 underflow."""

from __future__ import annotations

import torch
from torch import Tensor

# Default relative tolerance of a converted net against the float64 truth, per dtype: a few
# hundred ulps of headroom over the measured fp32 floor (1e-7 .. 1e-5 on deep nets).
_TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 5e-2,
    torch.bfloat16: 1e-1,
}


def tolerance(dtype: torch.dtype) -> float:
    """Default relative tolerance (max|err| / max|ref|) for a net evaluated in `dtype`."""
    return _TOLERANCE.get(dtype, 1e-4)


def max_abs(ref: Tensor, out: Tensor) -> float:
    """Largest absolute difference, computed in float64."""
    return float((out.to(torch.float64) - ref.to(torch.float64)).abs().max())


def rel_max(ref: Tensor, out: Tensor) -> float:
    """max|out - ref| / max|ref|: relative to the signal's scale, 0 when both are zero."""
    diff = max_abs(ref, out)
    scale = float(ref.to(torch.float64).abs().max())
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def top1_agree(ref: Tensor, out: Tensor) -> float:
    """Fraction of rows whose argmax agrees (1.0 for outputs without a class dimension)."""
    if ref.dim() < 2:
        return 1.0
    return float((ref.argmax(dim=1) == out.argmax(dim=1)).to(torch.float64).mean())


def underflow_fraction(reference: Tensor, dtype: torch.dtype = torch.float32) -> float:
    """Fraction of non-zero values of a float64 reference that `dtype` can only hold as
    denormals or zero: there, low-precision results are artefacts, not conversion error."""
    ref = reference.to(torch.float64)
    nonzero = ref != 0
    if not bool(nonzero.any()):
        return 0.0
    tiny = torch.finfo(dtype).tiny
    return float(((ref.abs() < tiny) & nonzero).sum()) / float(nonzero.sum())


def compare(ref: Tensor, out: Tensor) -> dict[str, float]:
    """max_abs, rel_max and top1_agree of `out` against `ref`."""
    return {
        "max_abs": max_abs(ref, out),
        "rel_max": rel_max(ref, out),
        "top1_agree": top1_agree(ref, out),
    }
