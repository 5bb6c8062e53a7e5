"""What the project promises to users, spelled out once for the tests: metric names (DESIGN.md)
and the official RepVGG checkpoint naming."""

from __future__ import annotations

import re

import torch

# The stable drift metric names every run and every deploy report carries.
DRIFT_METRICS = (
    "drift/max_abs",
    "drift/rel_max",
    "drift/top1_agree",
    "drift/vs_fp64/train_rel_max",
    "drift/vs_fp64/deploy_rel_max",
    "drift/underflow_frac",
)

# fp32 logits of a converted net vs the float64 multi-branch net; measured 0.5-3.4e-6 over the
# registry at 32x32 (1x1 final maps, so no averaging), while a wrong fusion is off by O(1).
FP32_REL = 2e-5

# Our (timm's) key names -> the official DingXiaoH/RepVGG names; written independently of the
# loader's map so the tests check it rather than reuse it.
OURS_TO_OFFICIAL = [
    (r"^stem\.", "stage0."),
    (r"^stages\.(\d+)\.(\d+)\.", lambda m: f"stage{int(m[1]) + 1}.{m[2]}."),
    (r"\.conv_kxk\.", ".rbr_dense."),
    (r"\.conv_1x1\.", ".rbr_1x1."),
    (r"\.identity\.", ".rbr_identity."),
    (r"\.reparam_conv\.", ".rbr_reparam."),
    (r"\.attn\.fc1\.", ".se.down."),
    (r"\.attn\.fc2\.", ".se.up."),
    (r"^head\.fc\.", "linear."),
]


def official_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict renamed the way official RepVGG checkpoints name it."""
    renamed = {}
    for key, value in state.items():
        for pattern, repl in OURS_TO_OFFICIAL:
            key = re.sub(pattern, repl, key)
        renamed[key] = value
    return renamed
