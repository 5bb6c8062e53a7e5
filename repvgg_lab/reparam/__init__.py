"""Pure tensor math for structural re-parameterization (imports torch only)."""

from repvgg_lab.reparam.bn import FUSE_DTYPE, BNStats, fuse_conv_bn
from repvgg_lab.reparam.drift import (
    compare,
    max_abs,
    rel_max,
    tolerance,
    top1_agree,
    underflow_fraction,
)
from repvgg_lab.reparam.kernels import block_diagonal, identity_kernel, merge, pad_to, ungroup
from repvgg_lab.reparam.repvgg import qarepvgg_kernel_bias, repvgg_kernel_bias

__all__ = [
    "FUSE_DTYPE",
    "BNStats",
    "block_diagonal",
    "compare",
    "fuse_conv_bn",
    "identity_kernel",
    "max_abs",
    "merge",
    "pad_to",
    "qarepvgg_kernel_bias",
    "rel_max",
    "repvgg_kernel_bias",
    "tolerance",
    "top1_agree",
    "ungroup",
    "underflow_fraction",
]
