"""ONNX Runtime post-training quantization of a trained digits net: the QDQ graph, accuracy and
agreement measured in ONNX Runtime on real digits images (checked against counts made here with
a bare ONNX Runtime session), atomic writes, latency. Margins: tests/quant/margins.py."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from repvgg_lab.errors import QuantizationError
from repvgg_lab.quant import (
    INT8_ONNX,
    LAYERS_JSON,
    QuantOptions,
    check_qdq,
    evaluate_int8,
    int8_deploy,
    int8_latency,
    quantize_net,
    quantize_onnx,
)
from repvgg_lab.quant.fakequant import act_qparams, fake_quant_weight
from repvgg_lab.runtime import OnnxRunner
from tests.helpers.qdq import ort_correct, ort_predictions, torch_correct, torch_predictions
from tests.helpers.qdq import producers as _producers
from tests.quant.margins import FP32_MIN, PER_CHANNEL_ALLOW, PER_CHANNEL_DISAGREE


def test_int8_model_has_qdq_around_every_conv_and_runs(fp32_onnx, calib, test_split, tmp_path):
    out = quantize_onnx(fp32_onnx, tmp_path / "int8.onnx", calib, QuantOptions())
    proto = onnx.load(str(out))
    producers = _producers(proto)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == 22
    consumed = {name for node in proto.graph.node for name in node.input}
    for conv in convs:
        x_src, w_src = producers[conv.input[0]], producers[conv.input[1]]
        assert (x_src.op_type, w_src.op_type) == ("DequantizeLinear", "DequantizeLinear")
        # The weight is stored as int8 and dequantized per output channel (axis 0).
        q_weight = next(t for t in proto.graph.initializer if t.name == w_src.input[0])
        assert q_weight.data_type == onnx.TensorProto.INT8
        assert len(next(t for t in proto.graph.initializer if t.name == w_src.input[1]).dims) == 1
        assert conv.output[0] in consumed
    assert check_qdq(proto)["QuantizeLinear"] >= 22
    y = OnnxRunner(out)(test_split[0][:4])
    assert y.shape == (4, 10) and bool(torch.isfinite(y).all())


def test_fp32_graph_fails_the_qdq_check(fp32_onnx):
    with pytest.raises(QuantizationError, match="without DequantizeLinear"):
        check_qdq(onnx.load(str(fp32_onnx)))


def test_per_tensor_weights_have_one_scale(fp32_onnx, calib, tmp_path):
    out = quantize_onnx(fp32_onnx, tmp_path / "t.onnx", calib, QuantOptions(per_channel=False))
    proto = onnx.load(str(out))
    producers, inits = _producers(proto), {t.name: t for t in proto.graph.initializer}
    for conv in (n for n in proto.graph.node if n.op_type == "Conv"):
        scale = inits[producers[conv.input[1]].input[1]]
        assert list(scale.dims) == []


def test_reported_agreement_is_what_onnx_runtime_gives(
    trained_plain, fp32_onnx, calib, test_split, tmp_path
):
    images, labels = test_split
    out = quantize_onnx(fp32_onnx, tmp_path / "int8.onnx", calib)
    metrics = evaluate_int8(out, OnnxRunner(fp32_onnx), images, labels)
    int8, fp32 = ort_predictions(out, images), ort_predictions(fp32_onnx, images)
    assert metrics["quant/int8/top1_agree"] == pytest.approx(float(np.mean(int8 == fp32)))
    assert metrics["quant/int8/test/acc"] == pytest.approx(float(np.mean(int8 == labels.numpy())))
    assert metrics["quant/fp32/test/acc"] == pytest.approx(float(np.mean(fp32 == labels.numpy())))
    # The torch net as the reference gives the same numbers as its ONNX export.
    from_torch = evaluate_int8(out, trained_plain, images, labels)
    assert from_torch["quant/int8/top1_agree"] == metrics["quant/int8/top1_agree"]
    # A trained net (chance is 27 images), so agreement and accuracy mean something.
    assert int(np.sum(fp32 == labels.numpy())) >= FP32_MIN


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_every_method_keeps_digits_accuracy(trained_plain, calib, test_split, tmp_path, method):
    images, labels = test_split
    out = quantize_net(trained_plain, tmp_path / "m.onnx", calib, QuantOptions(method=method))
    metrics = evaluate_int8(out, trained_plain, images, labels)
    # Counted here: a bare ONNX Runtime session on the written file, the torch net in fp32.
    int8, fp32 = ort_predictions(out, images), torch_predictions(trained_plain, images)
    truth, n = labels.numpy(), len(labels)
    assert metrics["quant/int8/test/acc"] == pytest.approx(np.sum(int8 == truth) / n)
    assert metrics["quant/fp32/test/acc"] == pytest.approx(np.sum(fp32 == truth) / n)
    assert metrics["quant/int8/top1_agree"] == pytest.approx(np.mean(int8 == fp32))
    # In images: int8 keeps fp32's accuracy and answers, to the margin CPUs and training allow.
    assert np.sum(int8 == truth) >= np.sum(fp32 == truth) - PER_CHANNEL_ALLOW
    assert np.sum(int8 != fp32) <= PER_CHANNEL_DISAGREE
    assert 0 < metrics["quant/int8/rel_max"] < 0.5


def test_failed_quantization_writes_nothing(fp32_onnx, calib, tmp_path):
    target = tmp_path / "int8.onnx"
    target.write_bytes(b"old")
    with pytest.raises(QuantizationError, match="calibration_batches=16"):
        quantize_onnx(fp32_onnx, target, calib[:3])
    with pytest.raises(Exception):  # noqa: B017 - ONNX Runtime's own error for a bad input
        quantize_onnx(fp32_onnx, target, calib[:, :1])
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]


def test_equalize_needs_the_torch_net(fp32_onnx, calib, tmp_path):
    with pytest.raises(QuantizationError, match="quantize_net"):
        quantize_onnx(fp32_onnx, tmp_path / "x.onnx", calib, QuantOptions(equalize=True))


def test_latency_is_interleaved_per_batch_size(fp32_onnx, calib, tmp_path):
    out = quantize_onnx(fp32_onnx, tmp_path / "int8.onnx", calib)
    metrics = int8_latency(fp32_onnx, out, 32, batch_sizes=(1, 4), rounds=3, warmup=1, threads=1)
    for n in (1, 4):
        assert metrics[f"quant/latency/b{n}/fp32_ms"] > 0
        assert metrics[f"quant/latency/b{n}/int8_ms"] > 0
        assert 0 < metrics[f"quant/latency/b{n}/int8_over_fp32"] < 100
    assert Path(out).exists()


def test_int8_deploy_writes_both_files_and_names_the_worst_layer(
    trained_plain, fp32_onnx, calib, test_split, tmp_path
):
    images, labels = test_split
    metrics = int8_deploy(
        trained_plain,
        tmp_path / "out",
        calib,
        images,
        labels,
        QuantOptions(equalize=True),
        fp32_onnx=fp32_onnx,
        latency_batches=(1,),
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [INT8_ONNX, LAYERS_JSON]
    report = json.loads((tmp_path / "out" / LAYERS_JSON).read_text())
    assert metrics["quant/int8/worst_layer"] == report["worst"] == report["layers"][0]["name"]
    # Equalized, per-channel: in images, within the int8 margin of fp32 (counted here).
    int8_correct = ort_correct(tmp_path / "out" / INT8_ONNX, images, labels)
    assert metrics["quant/int8/test/acc"] == pytest.approx(int8_correct / len(labels))
    assert int8_correct >= torch_correct(trained_plain, images, labels) - PER_CHANNEL_ALLOW
    assert metrics["quant/latency/b1/int8_ms"] > 0


@pytest.mark.parametrize("per_channel", [True, False])
def test_pytorch_simulation_rounds_weights_like_onnx_runtime(
    trained_plain, fp32_onnx, calib, tmp_path, per_channel
):
    out = quantize_onnx(
        fp32_onnx, tmp_path / "w.onnx", calib, QuantOptions(per_channel=per_channel)
    )
    proto = onnx.load(str(out))
    producers, inits = _producers(proto), {t.name: t for t in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    for layer, conv in zip(trained_plain.features, convs, strict=True):
        dq = producers[conv.input[1]]
        q, scale = (torch.from_numpy(numpy_helper.to_array(inits[n]).copy()) for n in dq.input[:2])
        ort_weight = q.float() * (scale.view(-1, 1, 1, 1) if per_channel else scale)
        ours = fake_quant_weight(layer.conv.weight.detach(), per_channel)
        assert torch.allclose(ours, ort_weight, rtol=0, atol=1e-6 * float(scale.max()))


def test_pytorch_simulation_uses_onnx_runtime_activation_grid(fp32_onnx, calib, tmp_path):
    out = quantize_onnx(fp32_onnx, tmp_path / "a.onnx", calib)
    proto = onnx.load(str(out))
    producers, inits = _producers(proto), {t.name: t for t in proto.graph.initializer}
    first = next(n for n in proto.graph.node if n.op_type == "Conv")
    dq = producers[first.input[0]]
    scale, zero = (float(numpy_helper.to_array(inits[n])) for n in dq.input[1:3])
    ours_scale, ours_zero = act_qparams(float(calib.min()), float(calib.max()))
    assert ours_scale == pytest.approx(scale, rel=1e-6)
    assert ours_zero == zero
