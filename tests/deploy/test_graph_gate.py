"""The exported-graph gate: a tv_* net must export to its own architecture's graph (same op
types, each as often, same conv weight shapes); RepVGG-family nets keep the plain-ops rule."""

from __future__ import annotations

import pytest
import torch
import torchvision

from repvgg_lab.errors import DeployError
from repvgg_lab.models import create_model, reparameterize
from repvgg_lab.runtime.export import (
    check_exported_graph,
    check_same_graph,
    conv_weight_shapes,
    onnx_graph,
    op_counts,
)

GREY = {"branches": "dbb", "in_channels": 1}
X = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def branched() -> torch.nn.Module:
    return create_model("tv_resnet18", num_classes=10, **GREY).eval()


@pytest.fixture(scope="module")
def converted(branched):
    return onnx_graph(reparameterize(branched), X)


def _one_line_deploy_error(proto, name: str = "tv_resnet18", kwargs=GREY, x=X) -> str:
    with pytest.raises(DeployError) as info:
        check_exported_graph(proto, name, 10, kwargs, x)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_converted_net_passes_with_torchvisions_own_ops(converted) -> None:
    counts = check_exported_graph(converted, "tv_resnet18", 10, GREY, X)
    # A ResNet keeps its residual additions: the plain-ops rule would refuse it.
    assert counts["Add"] == 8 and counts["Conv"] == 20 and "BatchNormalization" not in counts
    fresh = torchvision.models.resnet18(num_classes=10)
    fresh.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    expected = [tuple(m.weight.shape) for m in fresh.modules() if isinstance(m, torch.nn.Conv2d)]
    assert sorted(conv_weight_shapes(converted)) == sorted(expected)


def test_unconverted_branches_fail_the_gate(branched) -> None:
    message = _one_line_deploy_error(onnx_graph(branched, X))
    assert "not tv_resnet18's own" in message and "Conv (vs 20)" in message


def test_another_architecture_fails_the_gate() -> None:
    resnet34 = create_model("tv_resnet34", num_classes=10, in_channels=1, deploy=True)
    message = _one_line_deploy_error(onnx_graph(resnet34, X))
    assert "36 Conv (vs 20)" in message and "16 Add (vs 8)" in message


def test_same_ops_but_other_conv_shapes_fail_the_gate(converted) -> None:
    rgb = create_model("tv_resnet18", num_classes=10, deploy=True).eval()
    x3 = torch.randn(2, 3, 16, 16)
    assert op_counts(onnx_graph(rgb, x3)) == op_counts(converted)
    message = _one_line_deploy_error(converted, kwargs={"branches": "dbb"}, x=x3)
    assert "conv 0 has weight shape (64, 1, 7, 7) (vs (64, 3, 7, 7)" in message
    with pytest.raises(DeployError, match="not tv_resnet18's own"):
        check_same_graph(converted, onnx_graph(rgb, x3), "tv_resnet18")


def test_repvgg_nets_keep_the_plain_ops_rule(converted) -> None:
    message = _one_line_deploy_error(converted, name="repvgg_a0", kwargs={})
    assert "is not plain" in message and "8 Add" in message


def test_an_operator_onnx_cannot_export_dynamically_is_a_one_line_error() -> None:
    # VGG's classifier input: adaptive pooling to 7x7 needs a fixed input size.
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(7))
    with pytest.raises(DeployError) as info:
        onnx_graph(net, X)
    message = str(info.value)
    assert "cannot be exported to ONNX with dynamic" in message and "adaptive_avg_pool2d" in message
    assert "\n" not in message
