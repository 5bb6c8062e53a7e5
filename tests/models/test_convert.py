"""reparameterize(): equivalence for every variant, and the promises of the API around it."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.utils.model import reparameterize_model
from torch import nn

from repvgg_lab.models import MODELS, RepVGGBlock, create_model, list_models, reparameterize
from repvgg_lab.models.plain import PlainNet
from repvgg_lab.models.repconv import RepConv
from repvgg_lab.reparam import rel_max
from tests.helpers.contract import FP32_REL

FAST_VARIANTS = {"repvgg_a0", "repvgg_b0"}


def _blocks(model: nn.Module) -> list[RepConv]:
    """The re-parameterizable convs of a model (RepVGG, QARepVGG and MobileOne blocks)."""
    return [m for m in model.modules() if isinstance(m, RepConv)]


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# Nets whose deploy form is a plain conv stack (small_cnn and tv_* keep their own architecture,
# BN included: tests/models/test_add_branches.py and test_torchvision_nets.py convert those).
PLAIN_BY_DESIGN = [n for n in list_models() if not getattr(MODELS[n], "keeps_architecture", False)]


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(
    "name",
    [n if n in FAST_VARIANTS else pytest.param(n, marks=pytest.mark.slow) for n in PLAIN_BY_DESIGN],
)
def test_every_variant_converts_to_an_equivalent_plain_net(name, trained, truth) -> None:
    model = trained(name)
    plain = reparameterize(model)
    assert all(b.deploy for b in _blocks(plain)) and len(_blocks(plain)) == len(_blocks(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_max(truth(model, x), plain(x)) < FP32_REL


@pytest.mark.parametrize("overrides", [{"groups": 4}, {"se": True}, {"in_channels": 1}])
def test_grouped_se_and_grey_variants_convert(overrides, trained, truth) -> None:
    model = trained("repvgg_a0", **overrides)
    x = torch.randn(2, overrides.get("in_channels", 3), 32, 32)
    with torch.no_grad():
        assert rel_max(truth(model, x), reparameterize(model)(x)) < FP32_REL


def test_returns_a_new_module_and_leaves_the_source_bitwise_untouched(trained) -> None:
    model = trained()
    params_before = {n: p for n, p in model.named_parameters()}
    state_before = _snapshot(model)
    plain = reparameterize(model)
    assert plain is not model
    _assert_same_state(state_before, model.state_dict())
    assert dict(model.named_parameters()) == params_before  # same Parameter objects
    assert all(not b.deploy and hasattr(b, "conv_kxk") for b in _blocks(model))

    # Nothing is shared: training the plain net cannot touch the source.
    def storages(m: nn.Module) -> set[int]:
        return {t.untyped_storage().data_ptr() for t in m.state_dict().values()}

    assert not storages(model) & storages(plain)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_keeps_dtype_and_device(dtype, trained, truth) -> None:
    model = trained().to(dtype)
    plain = reparameterize(model)
    assert {p.dtype for p in plain.parameters()} == {dtype}
    assert {p.device for p in plain.parameters()} == {next(model.parameters()).device}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        err = rel_max(truth(model, x), plain(x.to(dtype)))
    assert err < (1e-12 if dtype == torch.float64 else 5e-2)


@pytest.mark.gpu
def test_keeps_the_cuda_device(trained) -> None:
    model = trained().cuda()
    plain = reparameterize(model)
    assert {p.device.type for p in plain.parameters()} == {"cuda"}


class _UserNet(nn.Module):
    """A user's own tree: foreign layers around RepVGG blocks, one block used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.ModuleDict(
            {"a": RepVGGBlock(8, 8), "b": nn.Sequential(RepVGGBlock(8, 16, stride=2))}
        )
        self.shared = self.body["a"]
        self.post = nn.Sequential(nn.BatchNorm2d(16), nn.Flatten(), nn.LazyLinear(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body["a"](self.pre(x))
        return self.post(self.body["b"](self.shared(x)))


def test_converts_blocks_embedded_in_a_user_module_tree(truth) -> None:
    from repvgg_lab.testing import randomize_bn

    net = randomize_bn(_UserNet())
    x = torch.randn(2, 3, 16, 16)
    net(x)  # materialise the lazy layer
    net.eval()
    plain = reparameterize(net)
    assert isinstance(plain, _UserNet)
    assert plain.body["a"].deploy and plain.body["b"][0].deploy
    assert plain.shared is plain.body["a"]  # the shared block stays shared
    assert isinstance(plain.post[0], nn.BatchNorm2d)  # foreign BN is not a branch: kept
    assert plain.pre is not net.pre and torch.equal(plain.pre.weight, net.pre.weight)
    with torch.no_grad():
        assert rel_max(truth(net, x), plain(x)) < FP32_REL


def test_train_mode_source_converts_like_eval_mode_and_keeps_its_flags(trained) -> None:
    model = trained()
    eval_plain = reparameterize(model)
    model.train()
    model.stages[1].eval()  # mixed flags must survive too
    flags = {n: m.training for n, m in model.named_modules()}
    running = _snapshot(model)
    train_plain = reparameterize(model)
    assert {n: m.training for n, m in model.named_modules()} == flags
    _assert_same_state(running, model.state_dict())  # no batch statistics were gathered
    # Running statistics, not batch statistics: the weights are bitwise those of eval mode.
    _assert_same_state(eval_plain.state_dict(), train_plain.state_dict())


def test_block_equivalent_kernel_reads_running_stats_in_train_mode() -> None:
    block = RepVGGBlock(6, 6).train()
    with torch.no_grad():
        block.conv_kxk.bn.running_var.fill_(4.0)
    train_k, train_b = block.get_equivalent_kernel_bias()
    eval_k, eval_b = block.eval().get_equivalent_kernel_bias()
    assert torch.equal(train_k, eval_k) and torch.equal(train_b, eval_b)


@pytest.mark.parametrize(
    "model",
    [timm.create_model("repvgg_a0", num_classes=3), nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())],
    ids=["timm", "plain_torch"],
)
def test_model_without_blocks_is_a_clear_type_error(model) -> None:
    with pytest.raises(TypeError, match="no re-parameterizable"):
        reparameterize(model)


def test_already_plain_models_are_left_as_they_are(trained) -> None:
    deploy = create_model("repvgg_a0", num_classes=10, deploy=True)
    assert reparameterize(deploy, inplace=True) is deploy
    copy_ = reparameterize(deploy)
    assert copy_ is not deploy
    _assert_same_state(deploy.state_dict(), copy_.state_dict())
    # Converting twice changes nothing.
    once = reparameterize(trained())
    _assert_same_state(once.state_dict(), reparameterize(once).state_dict())
    spec = {
        "layers": [
            {
                "in_channels": 3,
                "out_channels": 4,
                "kernel_size": 3,
                "stride": 1,
                "padding": 1,
                "groups": 1,
                "act": "ReLU",
                "pool": None,
            }
        ],
        "num_features": 4,
        "num_classes": 2,
    }
    plain_net = PlainNet.from_spec(spec)
    assert reparameterize(plain_net, inplace=True) is plain_net


def test_inplace_replaces_blocks_inside_the_same_root(trained, truth) -> None:
    model = trained()
    reference = copy.deepcopy(model)
    stem_before = model.stem
    result = reparameterize(model, inplace=True)
    assert result is model and model.stem is not stem_before and model.stem.deploy
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_max(truth(reference, x), model(x)) < FP32_REL


def test_a_lone_block_converts_to_a_new_block() -> None:
    block = RepVGGBlock(4, 4).eval()
    plain = reparameterize(block)
    assert isinstance(plain, RepVGGBlock) and plain.deploy and not block.deploy


@pytest.mark.parametrize("verb", ["reparameterize", "switch_to_deploy"])
def test_block_verbs_switch_in_place(verb, trained, truth) -> None:
    model = trained()
    block = model.stages[0][1]  # has all three branches
    x = torch.randn(2, block.in_channels, 8, 8).abs()
    expected = truth(block, x)
    getattr(block, verb)()
    assert block.deploy and not hasattr(block, "conv_kxk") and not hasattr(block, "identity")
    assert set(block.state_dict()) == {"reparam_conv.weight", "reparam_conv.bias"}
    with torch.no_grad():
        assert rel_max(expected, block(x)) < 1e-5
    conv = block.reparam_conv
    getattr(block, verb)()  # a second call is a no-op
    assert block.reparam_conv is conv


def test_equivalent_kernel_is_differentiable_down_to_bn_parameters(trained) -> None:
    block = trained().stages[0][1]
    kernel, bias = block.get_equivalent_kernel_bias()
    assert kernel.requires_grad and bias.requires_grad
    (bias.sum() + kernel.square().sum()).backward()
    bns = [block.conv_kxk.bn, block.conv_1x1.bn, block.identity]
    for bn in bns:
        # bias = sum over branches of (beta - mean * gamma / sigma): d(sum bias)/d(beta) == 1.
        assert torch.equal(bn.bias.grad, torch.ones_like(bn.bias))
        assert bn.weight.grad is not None and bool(bn.weight.grad.abs().gt(0).any())
    assert block.conv_kxk.conv.weight.grad.abs().sum() > 0
    assert block.conv_1x1.conv.weight.grad.abs().sum() > 0


def test_timm_walker_converts_our_blocks(trained, truth) -> None:
    """Our blocks speak timm's `reparameterize()` verb, so timm's tree walker converts them."""
    model = trained()
    plain = reparameterize_model(model, inplace=False)
    assert all(b.deploy for b in _blocks(plain)) and not any(b.deploy for b in _blocks(model))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_max(truth(model, x), plain(x)) < FP32_REL
