"""Online branches (OREPA): the kernel built in every forward is the sum of the branch convs,
borders included; conversion composes once in float64 and folds the one BN."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from repvgg_lab import RepConv
from repvgg_lab.models.geometry import KINDS, branch_problem
from repvgg_lab.models.online import OREPA_SCALES
from repvgg_lab.reparam import rel_max
from repvgg_lab.testing import randomize_bn

# (in, out, kernel, stride, padding, dilation, groups)
GEOMETRIES = [
    (4, 6, 3, 2, 1, 1, 2),  # strided, grouped
    (6, 6, 3, 1, 2, 2, 1),  # dilated, 'same'
    (4, 4, 3, 1, 1, 1, 4),  # depthwise
    (4, 4, 5, 2, 2, 1, 4),  # depthwise 5x5, strided: padded pooling at stride 2
    (4, 8, 3, 2, 1, 1, 1),
    (4, 4, (3, 5), 1, (1, 2), 1, 1),  # rectangular
    (3, 5, 3, 1, 0, 1, 1),  # 'valid' padding
]


def _kinds(geometry) -> list[str]:
    """Every kind the geometry allows, with two kxk branches."""
    cin, cout, k, s, p, d, g = geometry
    probe = RepConv(cin, cout, k, s, p, d, g, branches=["kxk"]).geometry
    return ["kxk", "kxk", *(k for k in KINDS[1:] if branch_problem(k, probe) is None)]


def _randomize(block: nn.Module, seed: int) -> nn.Module:
    """Non-trivial scales (either sign) and kernels on every online branch, trained-like BN."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith("scale"):
                sign = torch.randint(0, 2, p.shape, generator=gen) * 2 - 1
                p.copy_((torch.rand(p.shape, generator=gen) + 0.5) * sign)
            elif "bn" not in name.split("."):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return randomize_bn(block, seed=seed)


def _online(geometry, kinds=None, seed=0, dtype=torch.float32, **kw) -> RepConv:
    torch.manual_seed(seed)
    cin, cout, k, s, p, d, g = geometry
    branches = kinds if kinds is not None else _kinds(geometry)
    block = RepConv(cin, cout, k, s, p, d, g, branches=branches, mode="online", **kw)
    return _randomize(block, seed).to(dtype).eval()


def _explicit(block: RepConv, x: torch.Tensor) -> torch.Tensor:
    """Each branch run as its own convs and pooling (PyTorch's zero padding and
    count_include_pad pooling), scaled and summed: what the one kernel must compute."""
    k, s, p, d, g = (block.geometry.kernel, block.geometry.stride, block.geometry.padding,
                     block.geometry.dilation, block.groups)  # fmt: skip
    total = 0
    for kind, m in block.branch_modules():
        if kind == "identity":
            y = x
        elif kind == "avg":
            y = F.avg_pool2d(x, k, s, p, count_include_pad=True)
        elif kind in ("1x1_kxk", "1x1_avg"):
            w1 = m.weight1
            if m.identity_based:  # + the identity, built here by hand
                per = w1.shape[1]
                w1 = w1.clone()
                w1[torch.arange(w1.shape[0]), torch.arange(w1.shape[0]) % per, 0, 0] += 1
            mid = F.conv2d(x, w1, groups=g)
            if kind == "1x1_avg":
                y = F.avg_pool2d(mid, k, s, p, count_include_pad=True)
            else:
                y = F.conv2d(mid, m.weight2, None, s, p, d, g)
        else:
            sub = m.weight.shape[2:]
            pad = [pi - di * ((ki - si) // 2) for pi, di, ki, si in zip(p, d, k, sub, strict=True)]
            y = F.conv2d(x, m.weight, None, s, pad, d, g)
        total = total + y * m.scale.view(1, -1, 1, 1)
    return total


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_the_forward_kernel_is_the_sum_of_the_branch_convs_in_float64(geometry) -> None:
    """Float64: the one conv equals the branch-by-branch sum to ~1e-15, border pixels
    included (odd input sizes at stride 2 put the last column on the padding)."""
    block = _online(geometry, dtype=torch.float64)
    x = torch.randn(2, geometry[0], 11, 13, dtype=torch.float64)
    with torch.no_grad():
        one = block._online_conv(x)
        explicit = _explicit(block, x)
    assert one.shape == explicit.shape
    assert rel_max(explicit, one) <= 1e-12


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_the_fp32_forward_kernel_sits_at_the_fp32_floor(geometry) -> None:
    """Float32: the composed-kernel conv is as close to the float64 branch sum as the fp32
    branch-by-branch sum is (3x its error, 1e-5 at least: a few ulps on sums of ~100 terms)."""
    block = _online(geometry, seed=1)
    x = torch.randn(2, geometry[0], 12, 9)
    with torch.no_grad():
        truth = _explicit(copy.deepcopy(block).double(), x.double())
        own = rel_max(truth, _explicit(block, x))
        one = rel_max(truth, block._online_conv(x))
    assert one <= max(3 * own, 1e-5), (one, own)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_conversion_composes_in_float64_and_folds_the_one_bn(geometry) -> None:
    block64 = _online(geometry, seed=2, dtype=torch.float64)
    x = torch.randn(2, geometry[0], 11, 10)
    with torch.no_grad():
        truth = block64(x.double())
        assert rel_max(truth, block64.to_plain()(x.double())) <= 1e-12
        block = _online(geometry, seed=2)
        own = rel_max(truth, block(x))
        plain = block.to_plain()
        err = rel_max(truth, plain(x))
    assert err <= max(3 * own, 1e-5), (err, own)
    assert set(plain.state_dict()) == {"reparam_conv.weight", "reparam_conv.bias"}
    assert not hasattr(plain, "bn") and hasattr(block, "bn")


def test_the_forward_kernel_is_differentiable_and_every_branch_learns() -> None:
    """Every kernel and scale gets a gradient through the one composed kernel."""
    block = _online((4, 4, 3, 1, 1, 1, 1), seed=3).train()
    block(torch.randn(4, 4, 8, 8)).square().mean().backward()
    grads = {n: p.grad for n, p in block.named_parameters()}
    assert {n for n, g in grads.items() if g is None or not g.abs().sum() > 0} == set()
    assert any(".weight1" in n for n in grads) and any(".weight2" in n for n in grads)


def test_orepa_scales_are_the_default_start_and_keep_silences_all_but_the_first_kxk() -> None:
    block = RepConv(4, 4, 3, branches="dbb", mode="online")
    assert {k: float(m.scale[0].detach()) for k, m in block.branch_modules()} == {
        k: OREPA_SCALES[k] for k in ("kxk", "1x1", "1x1_avg", "1x1_kxk")
    }
    keep = RepConv(4, 4, 3, branches=["kxk", "1x1", "kxk"], mode="online", init_scales="keep")
    assert [float(m.scale.detach().abs().max()) for _, m in keep.branch_modules()] == [
        1.0,
        0.0,
        0.0,
    ]
    with pytest.raises(ValueError, match="unknown branch mode 'later'"):
        RepConv(4, 4, 3, mode="later")


def test_the_deploy_form_loads_the_online_conversion_strictly() -> None:
    block = _online((4, 6, 3, 2, 1, 1, 2), kinds="dbb", seed=4)
    deploy = RepConv(4, 6, 3, 2, 1, 1, 2, branches="dbb", mode="online", deploy=True)
    deploy.load_state_dict(block.to_plain().state_dict(), strict=True)
    x = torch.randn(1, 4, 7, 7)
    with torch.no_grad():
        assert rel_max(block(x), deploy(x)) <= 1e-5
    block.reparameterize()
    assert block.deploy and not hasattr(block, "bn")
