"""RMNet models: torchvision compatibility, exact conversion to PlainNet, cost, export."""

import copy
import functools
import io
import math

import numpy as np
import onnxruntime
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from repvgg_lab import create_model, load_pretrained, measure_drift, reparameterize
from repvgg_lab.errors import ConversionError
from repvgg_lab.models.plain import ChannelClamp, PlainLayer, PlainNet
from repvgg_lab.models.rmnet import RMResNet
from repvgg_lab.reparam import rel_max, tolerance
from repvgg_lab.testing import calibrate_bn, randomize_bn
from repvgg_lab.utils import count_macs, count_params

SIZE = 64
NAMES = ["rmnet_resnet18", "rmnet_resnet34", "rmnet_resnet50", "rmnet_mobilenet_v2"]


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN gamma/beta, running statistics calibrated on images: well-scaled like a trained
    net. MobileNetV2's ReLU6 inputs get gamma x2 so that ~1% of them exceed the cap at 6."""
    randomize_bn(model, seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torchvision.ops.Conv2dNormActivation) and isinstance(m[2], nn.ReLU6):
                m[1].weight.mul_(2)
    return calibrate_bn(model, _images(4, seed + 100).to(next(model.parameters()).dtype)).eval()


def _params(names: list[str], slow: tuple[str, ...] = ("rmnet_resnet50",)) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


@functools.cache
def _model(name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A shared trained-like model: tests must not modify it (deep-copy first)."""
    return trained_like(create_model(name).to(dtype))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_is_torchvisions(name):
    """Same keys, order and shapes as torchvision's model, so its checkpoints load unchanged."""
    with torch.device("meta"):
        ours = create_model(name).state_dict()
        theirs = getattr(torchvision.models, name.removeprefix("rmnet_"))().state_dict()
    assert [(k, v.shape) for k, v in ours.items()] == [(k, v.shape) for k, v in theirs.items()]


@pytest.mark.parametrize("name", ["rmnet_resnet18", "rmnet_mobilenet_v2", "rmnet_resnet50"])
def test_torchvision_weights_load_and_convert(name):
    """A (random, BN-randomised) torchvision state dict loads strictly, gives torchvision's exact
    logits, and converts: the plain net is as close to the float64 truth as torchvision's."""
    tv = trained_like(getattr(torchvision.models, name.removeprefix("rmnet_"))(weights=None))
    ours = load_pretrained(create_model(name), tv.state_dict()).eval()
    x = _images(2, 7)
    with torch.no_grad():
        assert torch.equal(ours(x), tv(x))
    report = measure_drift(tv, reparameterize(ours), x)
    assert report.deploy_rel_max <= 3 * report.train_rel_max


@pytest.mark.parametrize("name", _params(NAMES))
def test_float64_conversion_is_exact(name):
    """Plain net vs source in float64: round-off only (<= 1e-12 relative), BN folded everywhere."""
    source = _model(name, torch.float64)
    plain = reparameterize(source)
    assert isinstance(plain, PlainNet)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in plain.modules())
    assert all(p.dtype == torch.float64 for p in plain.parameters())
    x = _images(2, 1).double()
    with torch.no_grad():
        assert rel_max(source(x), plain(x)) <= 1e-12


@pytest.mark.parametrize("name", _params(NAMES, slow=("rmnet_resnet34", "rmnet_resnet50")))
def test_float32_drift_is_at_the_sources_own_noise_floor(name):
    """In fp32 the plain net is as close to the float64 truth as the source itself (within 3x)."""
    source = _model(name)
    report = measure_drift(source, reparameterize(source), _images(4, 2))
    assert 0 < report.train_rel_max < 1e-4
    assert report.deploy_rel_max <= 3 * report.train_rel_max
    assert report.top1_agree == 1.0


@pytest.mark.parametrize("grouped", [True, False])
def test_truncated_bottleneck_net_is_exact(grouped):
    """A ResNet with one or two bottlenecks per stage (identity and projection shortcuts, stride 1
    and 2) converts exactly with the grouped and with RMNet's dense 3x3 layout."""
    source = trained_like(RMResNet(Bottleneck, [2, 1, 1, 1], num_classes=10).double())
    plain = source.to_plain(grouped_bottleneck=grouped)
    grouped_3x3 = [layer.conv.groups for layer in plain.features[2::3]]
    assert grouped_3x3 == ([2, 5, 3, 3, 3] if grouped else [1] * 5)
    x = _images(2, 3).double()
    with torch.no_grad():
        assert rel_max(source(x), plain(x)) <= 1e-12
    report = measure_drift(source.float(), plain.float(), _images(2, 4))
    assert report.deploy_rel_max <= 3 * report.train_rel_max


def test_residual_branches_matter_in_the_test_nets():
    """Sanity of the fixtures: silencing the BN that closes each branch changes the logits a lot,
    so the equivalence tests above would catch a branch converted wrongly."""
    source = _model("rmnet_resnet18")
    silenced = copy.deepcopy(source)
    with torch.no_grad():
        for block in silenced.modules():
            if isinstance(block, BasicBlock):
                block.bn2.weight.zero_()
                block.bn2.bias.zero_()
        x = _images(2, 5)
        assert rel_max(source(x), silenced(x)) > 0.1


def test_relu6_cap_is_kept_exactly():
    """Some ReLU6 inputs exceed 6; the plain net keeps the cap (ChannelClamp) and is exact, while
    dropping the cap as RMNet's PReLU form does changes the logits."""
    source = _model("rmnet_mobilenet_v2", torch.float64)
    pre_act = []  # cloned: the ReLU6 that follows works in place
    hooks = [
        m[1].register_forward_hook(lambda _m, _i, out: pre_act.append(out.flatten().clone()))
        for m in source.modules()
        if isinstance(m, torchvision.ops.Conv2dNormActivation)
    ]
    x = _images(2, 6).double()
    with torch.no_grad():
        y = source(x)
    for h in hooks:
        h.remove()
    assert float((torch.cat(pre_act) > 6).double().mean()) > 1e-3
    plain = reparameterize(source)
    clamps = [layer.act for layer in plain.features if isinstance(layer.act, ChannelClamp)]
    assert len(clamps) == 20  # the 1x1 expansion and depthwise 3x3 of the 10 residual blocks
    uncapped = copy.deepcopy(plain)
    for layer in uncapped.features:
        if isinstance(layer.act, ChannelClamp):
            layer.act.upper.fill_(math.inf)
    with torch.no_grad():
        assert rel_max(y, plain(x)) <= 1e-12
        assert rel_max(y, uncapped(x)) > 1e-3


def test_mobilenet_v2_merged_pointwise_is_exact_and_shorter():
    """RMNet's "MobileNetV1" form: linear 1x1s multiplied into the next 1x1, still exact."""
    source = _model("rmnet_mobilenet_v2", torch.float64)
    plain = reparameterize(source)
    merged = source.to_plain(merge_pointwise=True)
    assert len(merged.features) == len(plain.features) - 17  # every pw-linear is merged away
    assert not any(isinstance(layer.act, nn.Identity) for layer in merged.features)
    x = _images(2, 8).double()
    with torch.no_grad():
        assert rel_max(source(x), merged(x)) <= 1e-12


@pytest.mark.parametrize("name", ["rmnet_resnet18", "rmnet_mobilenet_v2"])
def test_deploy_true_builds_the_plain_structure(name):
    """create_model(deploy=True) is the PlainNet whose state dict reparameterize() produces."""
    plain = reparameterize(_model(name))
    empty = create_model(name, deploy=True)
    assert isinstance(empty, PlainNet)
    load_pretrained(empty, plain.state_dict())
    x = _images(2, 9)
    with torch.no_grad():
        assert torch.equal(empty(x), plain(x))


def test_conversion_leaves_the_source_untouched_and_keeps_dtype():
    """A train-mode source: conversion reads running statistics, mutates nothing, keeps dtype."""
    source = copy.deepcopy(_model("rmnet_resnet18", torch.float64)).train()
    before = {k: v.clone() for k, v in source.state_dict().items()}
    plain = reparameterize(source)
    assert source.training and plain.training
    assert all(torch.equal(before[k], v) for k, v in source.state_dict().items())
    assert {p.dtype for p in plain.parameters()} == {torch.float64}
    x = _images(2, 10).double()
    with torch.no_grad():
        assert rel_max(source.eval()(x), plain.eval()(x)) <= 1e-12
    assert reparameterize(plain) is not plain  # already plain: a copy, no error
    bf16 = reparameterize(_model("rmnet_mobilenet_v2", torch.bfloat16))
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert {b.dtype for b in bf16.buffers()} == {torch.bfloat16}


def test_plain_resnet_is_a_chain_of_convs_and_relus():
    """ResNet-18 -> 17 conv+ReLU layers (stem with its max-pool), widths as in the RM paper."""
    plain = reparameterize(create_model("rmnet_resnet18", num_classes=10, in_channels=1))
    assert all(isinstance(layer, PlainLayer) for layer in plain.features)
    assert all(type(layer.act) is nn.ReLU for layer in plain.features)
    widths = [layer.conv.out_channels for layer in plain.features]
    assert widths == [
        64,
        128,
        64,
        128,
        64,
        192,
        128,
        256,
        128,
        384,
        256,
        512,
        256,
        768,
        512,
        1024,
        512,
    ]
    assert plain.features[0].conv.in_channels == 1
    assert isinstance(plain.features[0].pool, nn.MaxPool2d)
    assert plain(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_resnet50_cost_is_at_most_5_5x_convs():
    """The grouped 3x3 keeps plain ResNet-50's conv parameters <= 5.5x the original's (RMNet's
    dense form: ~11x), counted on the meta device (no memory, no arithmetic)."""

    def conv_params(model: nn.Module) -> int:
        return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))

    with torch.device("meta"):
        source = create_model("rmnet_resnet50")
        grouped, dense = source.to_plain(), source.to_plain(grouped_bottleneck=False)
    ratio = conv_params(grouped) / conv_params(source)
    assert 1 < ratio <= 5.5
    assert conv_params(dense) / conv_params(source) > 10
    assert count_params(grouped) < count_params(dense)
    assert count_macs(grouped) <= 5.5 * count_macs(source) < count_macs(dense)


def test_plain_mobilenet_v2_exports_to_onnx():
    """ChannelClamp exports (Max/Min with per-channel bounds) and onnxruntime agrees."""
    plain = reparameterize(_model("rmnet_mobilenet_v2")).eval()
    x = _images(2, 11)
    buffer = io.BytesIO()
    torch.onnx.export(plain, (x,), buffer, dynamo=False, input_names=["x"], output_names=["y"])
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (y_onnx,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        y = plain(x)
    assert rel_max(y, torch.from_numpy(np.asarray(y_onnx))) < tolerance(torch.float32)


def test_unsupported_structures_fail_with_a_clear_error():
    dilated = create_model("rmnet_resnet50", replace_stride_with_dilation=[False, False, True])
    with pytest.raises(ConversionError, match=r"layer4\.1\.conv2: needs dilation 1, zero padding"):
        reparameterize(dilated)
    gelu = create_model("rmnet_resnet18")
    gelu.layer2[1].relu = nn.GELU()
    with pytest.raises(ConversionError, match=r"layer2\.1\.relu is GELU; .* block input is >= 0"):
        reparameterize(gelu)
