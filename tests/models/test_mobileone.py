"""MobileOne S0-S4: timm's parameter counts and module names, timm's weights giving timm's
outputs in both forms, an exact conversion of our own, and a plain exported graph."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import SEModule
from timm.utils.model import reparameterize_model
from torch import nn

from repvgg_lab.models import (
    MobileOneBlock,
    MobileOneConfig,
    create_model,
    load_pretrained,
    reparameterize,
)
from repvgg_lab.models.mobileone import block_branches
from repvgg_lab.reparam import rel_max
from repvgg_lab.runtime.export import check_plain_graph, export_onnx
from repvgg_lab.testing import randomize_bn
from repvgg_lab.utils import count_params
from tests.helpers.contract import FP32_REL
from tests.helpers.timm_nets import empty_model, random_timm

# (train-form, re-parameterized) parameter counts at num_classes=1000, as timm counts them
# (`timm.create_model(name)` and `timm.utils.reparameterize_model`).
TIMM_PARAMS = {
    "mobileone_s0": (5_293_272, 2_078_504),
    "mobileone_s1": (4_825_192, 4_764_840),
    "mobileone_s2": (7_884_648, 7_808_168),
    "mobileone_s3": (10_170_600, 10_078_312),
    "mobileone_s4": (14_951_248, 14_838_352),
}
NAMES = sorted(TIMM_PARAMS)  # each test takes about a second on a 2-core CPU, S4 included
# Same weights, same ops, only the order of the branch sum may differ: measured <= 1e-6 at fp32.
TIMM_REL = 1e-5


def _layout(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _blocks(model: nn.Module) -> list[MobileOneBlock]:
    return [m for m in model.modules() if isinstance(m, MobileOneBlock)]


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_and_state_dict_layout_equal_timm_in_both_forms(name: str) -> None:
    """Same keys and shapes as timm in the train and the re-parameterized form: widths, depths,
    branch counts, identity and scale branches, SE placement and widths all agree."""
    with torch.device("meta"):  # shapes only: no memory, no init
        ours, ours_plain = create_model(name), create_model(name, deploy=True)
        theirs = timm.create_model(name)
        theirs_plain = reparameterize_model(theirs, inplace=False)
    counts = (count_params(ours), count_params(ours_plain))
    assert counts == (count_params(theirs), count_params(theirs_plain)) == TIMM_PARAMS[name]
    assert _layout(ours) == _layout(theirs)
    assert _layout(ours_plain) == _layout(theirs_plain)
    assert all(b.deploy for b in _blocks(ours_plain)) and len(_blocks(ours_plain)) == len(
        _blocks(ours)
    )
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ours_plain.modules())


@pytest.mark.parametrize("name", NAMES)
def test_timm_weights_give_timm_outputs_in_both_forms(name: str) -> None:
    theirs = random_timm(name, seed=1)
    ours = load_pretrained(empty_model(name), theirs.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs(x)
        assert rel_max(expected, ours(x)) <= TIMM_REL
        theirs_plain = reparameterize_model(theirs, inplace=False)
        ours_plain = reparameterize(ours)
        assert rel_max(theirs_plain(x), ours_plain(x)) <= TIMM_REL
        assert rel_max(expected, ours_plain(x)) <= TIMM_REL
        # timm's re-parameterized weights load into our deploy-form model as they are.
        deploy = load_pretrained(empty_model(name, deploy=True), theirs_plain.state_dict())
        assert rel_max(theirs_plain(x), deploy(x)) <= TIMM_REL


@pytest.mark.parametrize("name", NAMES)
def test_conversion_matches_the_float64_branched_net(name: str, trained, truth) -> None:
    model = trained(name)
    plain = reparameterize(model)
    assert all(b.deploy for b in _blocks(plain)) and len(_blocks(plain)) == len(_blocks(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert rel_max(truth(model, x), plain(x)) < FP32_REL
    # The converted weights are exactly what a deploy=True model holds.
    deploy = create_model(name, num_classes=10, deploy=True).eval()
    deploy.load_state_dict(plain.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(deploy(x), plain(x))


def test_block_branches_follow_the_shapes() -> None:
    assert block_branches(8, 8, 3, 1, 4) == ["kxk"] * 4 + ["1x1", "identity"]
    assert block_branches(8, 8, 3, 2, 1) == ["kxk", "1x1"]
    assert block_branches(8, 16, 1, 1, 2) == ["kxk", "kxk"]
    assert block_branches(16, 16, 1, 1, 1) == ["kxk", "identity"]
    block = MobileOneBlock(8, 8, 3, groups=8, num_conv_branches=3)
    assert isinstance(block.conv_kxk, nn.ModuleList) and len(block.conv_kxk) == 3
    assert block.conv_scale.conv.kernel_size == (1, 1) and block.conv_scale.conv.groups == 8
    assert isinstance(block.identity, nn.BatchNorm2d)
    assert isinstance(MobileOneBlock(8, 16, 1).conv_kxk, nn.ModuleList)  # a list even for one


@pytest.mark.parametrize("channels", [448, 896, 104])
def test_squeeze_excite_width_is_timms(channels: int) -> None:
    """channels / 16 rounded to a multiple of 8 (448 -> 32, where channels // 16 gives 28)."""
    ours = MobileOneBlock(channels, channels, 1, se=True).attn
    assert ours.fc1.out_channels == SEModule(channels).fc1.out_channels


def test_grey_s0_trains_and_its_loss_decreases() -> None:
    """create_model("mobileone_s0", in_channels=1) trains on 32x32 grey images. The last
    stage's maps are 1x1 there, so training-mode BN needs a batch of at least 2 (and is noisy
    with so few values per channel): a batch of 8 and plain SGD."""
    torch.manual_seed(0)
    model = create_model("mobileone_s0", num_classes=10, in_channels=1).train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(torch.randn(1, 1, 32, 32))
    x, y = torch.randn(8, 1, 32, 32), torch.arange(8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-2:]) / 2 < losses[0] - 0.2
    model.eval()
    single = x[:1]
    with torch.no_grad():
        assert model(single).shape == (1, 10)
        assert rel_max(model(single), reparameterize(model)(single)) < FP32_REL


def test_deploy_form_exports_as_a_plain_onnx_graph(tmp_path) -> None:
    """Convs, ReLU, squeeze-excitation (mean, Sigmoid, Mul), the pooled head: nothing else."""
    config = MobileOneConfig(
        (0.25, 0.25, 0.25, 0.25), 2, se_blocks=(0, 0, 1, 1), depths=(1, 1, 1, 1)
    )
    torch.manual_seed(0)
    net = randomize_bn(config.build(num_classes=5)).eval()
    plain = reparameterize(net)
    path = tmp_path / "mobileone.onnx"
    counts = check_plain_graph(export_onnx(plain, path, torch.randn(2, 3, 32, 32)))
    assert counts["Conv"] == len(_blocks(net)) + 2 * 4  # one per block, two per SE block
    assert {"Relu", "Sigmoid", "Mul", "Gemm"} <= set(counts) and "Add" not in counts
    x = torch.randn(3, 3, 48, 40)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        assert rel_max(net(x), got) < FP32_REL
