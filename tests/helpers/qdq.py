"""What a QDQ int8 ONNX file holds (scales, zero points, weights per Conv), read with the `onnx`
package; predictions counted with a bare ONNX Runtime session or torch, independently of the
project's evaluators; and the small plain net the quantization tests build cases on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import numpy_helper

from repvgg_lab.models.plain import PlainNet
from repvgg_lab.runtime.runner import EXACT_INT8


def producers(proto: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Each tensor name mapped to the node that writes it."""
    return {out: node for node in proto.graph.node for out in node.output}


def convs(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The Conv nodes in graph order."""
    return [n for n in proto.graph.node if n.op_type == "Conv"]


def _initializer(proto: onnx.ModelProto, name: str) -> np.ndarray:
    """An initializer by name, as a numpy array."""
    return numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == name))


def _dequantize_params(proto: onnx.ModelProto, tensor: str) -> dict[str, np.ndarray]:
    """The quantized values, scale and zero point of the DequantizeLinear that writes `tensor`
    (values only when they are an initializer, i.e. for weights)."""
    dq = producers(proto)[tensor]
    assert dq.op_type == "DequantizeLinear", f"{tensor} is not dequantized"
    inits = {t.name for t in proto.graph.initializer}
    names = ("values", "scale", "zero_point")
    return {k: _initializer(proto, n) for k, n in zip(names, dq.input, strict=False) if n in inits}


def input_qparams(path: str | Path, conv_index: int = 0) -> tuple[float, int]:
    """(scale, zero point) of the activation the `conv_index`-th Conv reads."""
    proto = onnx.load(str(path))
    params = _dequantize_params(proto, convs(proto)[conv_index].input[0])
    return float(params["scale"]), int(params["zero_point"])


def weight_scales(path: str | Path) -> list[np.ndarray]:
    """Each Conv's weight scale as written: shape (out_channels,) per channel, () per tensor."""
    proto = onnx.load(str(path))
    return [_dequantize_params(proto, c.input[1])["scale"] for c in convs(proto)]


def int8_weights(path: str | Path) -> list[np.ndarray]:
    """Each Conv's dequantized weights (int8 values times their scale)."""
    proto = onnx.load(str(path))
    out = []
    for conv in convs(proto):
        p = _dequantize_params(proto, conv.input[1])
        scale = p["scale"].reshape(-1, 1, 1, 1) if p["scale"].ndim else p["scale"]
        out.append(p["values"].astype(np.float64) * scale)
    return out


def fp32_weights(path: str | Path) -> list[np.ndarray]:
    """Each Conv's weights in a float ONNX file."""
    proto = onnx.load(str(path))
    return [_initializer(proto, c.input[1]) for c in convs(proto)]


def uint8_range_qparams(low: float, high: float) -> tuple[float, int]:
    """ONNX Runtime's uint8 asymmetric (scale, zero point) for a range, worked out here from
    its definition: the range widened to hold 0, 255 steps, zero point round(-low / scale)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / 255.0
    return scale, round(-low / scale)


def ort_predictions(path: str | Path, images: torch.Tensor) -> np.ndarray:
    """Top-1 classes of an ONNX model on `images`, from a bare ONNX Runtime session (none of
    the project's runners or metrics in between): the independent count tests compare with."""
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry(*EXACT_INT8)  # exact int8 on CPUs without VNNI too
    session = onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    feed = {session.get_inputs()[0].name: images.float().numpy()}
    return session.run(None, feed)[0].argmax(axis=1)


def torch_predictions(net: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """Top-1 classes of an eval-mode torch net on `images`."""
    with torch.no_grad():
        return net(images.float()).argmax(dim=1).numpy()


def ort_correct(path: str | Path, images: torch.Tensor, labels: torch.Tensor) -> int:
    """How many of `images` the ONNX model classifies right (bare ONNX Runtime session)."""
    return int((ort_predictions(path, images) == labels.numpy()).sum())


def torch_correct(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> int:
    """How many of `images` the eval-mode torch net classifies right."""
    return int((torch_predictions(net, images) == labels.numpy()).sum())


def small_plain_net(groups: tuple[int, ...] = (1, 1, 1), act: str = "ReLU") -> PlainNet:
    """A three-layer 8-channel PlainNet on 3-channel images with N(0, 0.3²) weights (seed 0)."""
    layers = [
        {
            "in_channels": 3 if i == 0 else 8,
            "out_channels": 8,
            "kernel_size": 3,
            "stride": 1,
            "padding": 1,
            "groups": g,
            "act": act,
            "pool": None,
        }
        for i, g in enumerate(groups)
    ]
    net = PlainNet.from_spec({"layers": layers, "num_features": 8, "num_classes": 5}).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return net
