"""The ONNX writer keeps graphs plain and runnable; the plain-graph check catches the rest."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from repvgg_lab.deploy import DeployError
from repvgg_lab.models import RepVGGBlock, reparameterize
from repvgg_lab.runtime.export import check_plain_graph, export_onnx, op_counts
from repvgg_lab.testing import randomize_bn


def _blocks(se: bool = False) -> nn.Module:
    # The second block has an identity branch (in == out, stride 1): BN with no conv before it.
    torch.manual_seed(0)
    net = nn.Sequential(RepVGGBlock(3, 8, stride=2, se=se), RepVGGBlock(8, 8, se=se))
    return randomize_bn(net).eval()


def _ort(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def test_multi_branch_graph_is_rejected(tmp_path) -> None:
    proto = export_onnx(_blocks(), tmp_path / "multi.onnx", torch.randn(2, 3, 16, 16))
    with pytest.raises(DeployError, match="not plain") as err:
        check_plain_graph(proto)
    assert "Add" in str(err.value) and "BatchNormalization" in str(err.value)


def test_squeeze_excite_graph_is_plain_and_runs(tmp_path) -> None:
    plain = reparameterize(_blocks(se=True)).eval()
    path = tmp_path / "se.onnx"
    counts = check_plain_graph(export_onnx(plain, path, torch.randn(2, 3, 16, 16)))
    assert {"Conv", "Sigmoid", "Mul"} <= set(counts) and "Add" not in counts
    x = torch.randn(3, 3, 20, 24)  # another batch, height and width than the export example
    with torch.no_grad():
        expected = plain(x)
    assert torch.allclose(_ort(path, x), expected, rtol=1e-5, atol=1e-6)


def test_shared_weights_do_not_become_identity_nodes(tmp_path) -> None:
    # Equal biases (here all zero) are de-duplicated by the exporter into Identity nodes.
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    with torch.no_grad():
        net[0].bias.zero_()
        net[2].bias.zero_()
    path = tmp_path / "shared.onnx"
    proto = export_onnx(net.eval(), path, torch.randn(2, 3, 8, 8))
    assert op_counts(proto) == {"Conv": 2, "Relu": 1}
    assert op_counts(onnx.load(str(path))) == {"Conv": 2, "Relu": 1}
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(_ort(path, x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-6)
