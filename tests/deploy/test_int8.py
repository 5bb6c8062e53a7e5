"""deploy with quantize=int8: an int8 QDQ model beside the fp32 export, measured on real digits
images in ONNX Runtime, with the per-layer report; bad quantize options write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from repvgg_lab.deploy import deploy
from repvgg_lab.deploy.verify import OnnxRunner, real_batches
from repvgg_lab.quant import QuantOptions
from repvgg_lab.quant.ptq import check_qdq
from tests.deploy.conftest import SIZE, lightning_checkpoint


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, a0):
    folder = tmp_path_factory.mktemp("int8")
    ckpt = lightning_checkpoint(a0, folder / "a0.ckpt")
    report = deploy(
        ckpt,
        out_dir=folder / "out",
        verify_data="digits",
        batch_sizes=(1,),
        rounds=2,
        warmup=1,
        threads=1,
        quantize=QuantOptions(calibration_batches=2),
    )
    return report, folder / "out"


def test_int8_model_is_qdq_around_every_conv_and_listed(int8_run) -> None:
    report, out = int8_run
    assert report["files"]["int8_onnx"] == "model.int8.onnx"
    proto = onnx.load(str(out / "model.int8.onnx"))
    counts = check_qdq(proto)  # raises unless every Conv is wrapped
    assert counts["Conv"] == sum(1 for n in proto.graph.node if n.op_type == "Conv") > 0
    assert counts.get("QuantizeLinear", 0) > 0 and counts.get("DequantizeLinear", 0) > 0
    layers = json.loads((out / "quant_layers.json").read_text())["layers"]
    assert (
        layers[0]["rank"] == 1 and layers[0]["name"] == report["metrics"]["quant/int8/worst_layer"]
    )
    assert report["settings"]["quantize"]["calibration_batches"] == 2


def test_reported_agreement_is_what_onnx_runtime_gives_on_the_whole_split(int8_run) -> None:
    report, out = int8_run
    m = report["metrics"]
    images, labels = real_batches("digits", None, SIZE, 3, {"val": None})["val"]
    int8 = OnnxRunner(out / "model.int8.onnx")(images).argmax(dim=1)
    fp32 = OnnxRunner(out / "model.onnx")(images).argmax(dim=1)
    assert m["quant/int8/top1_agree"] == pytest.approx(float((int8 == fp32).double().mean()))
    assert m["quant/int8/val/acc"] == pytest.approx(float((int8 == labels).double().mean()))
    assert len(labels) == m["verify/images"]  # the whole validation split, not a subset
    assert m["quant/latency/b1/int8_over_fp32"] > 0
    assert len(labels) == 269  # digits' validation split
    images, labels = real_batches("digits", None, SIZE, 3, {"test": None})["test"]
    int8 = OnnxRunner(out / "model.int8.onnx")(images).argmax(dim=1)
    assert m["quant/int8/test/acc"] == pytest.approx(float((int8 == labels).double().mean()))


def test_without_verify_data_quantize_is_refused_before_any_work(tmp_path: Path, a0) -> None:
    from repvgg_lab.errors import DeployError

    ckpt = lightning_checkpoint(a0, tmp_path / "a0.ckpt")
    with pytest.raises(DeployError, match="quantize=int8 needs real images"):
        deploy(ckpt, out_dir=tmp_path / "out", quantize=QuantOptions())
    assert not (tmp_path / "out").exists()
