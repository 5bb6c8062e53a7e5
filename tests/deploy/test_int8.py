"""deploy with quantize=int8: an int8 QDQ model beside the fp32 export, measured on real digits
images in ONNX Runtime, with the per-layer report and the quantization as applied recorded in
report.json (checked against the written model); bad quantize options write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from repvgg_lab.deploy import deploy
from repvgg_lab.deploy.int8 import quantize
from repvgg_lab.deploy.options import DeployOptions
from repvgg_lab.deploy.verify import real_loaders
from repvgg_lab.quant import QuantOptions
from repvgg_lab.quant.ptq import check_qdq
from repvgg_lab.runtime import OnnxRunner
from repvgg_lab.runtime.runner import EXACT_INT8, cpu_has_vnni
from tests.deploy.conftest import SIZE, lightning_checkpoint
from tests.helpers.qdq import (
    fp32_weights,
    input_qparams,
    int8_weights,
    small_plain_net,
    uint8_range_qparams,
    weight_scales,
)

# Options away from every default, so the report and the model can show each one was applied.
OPTIONS = QuantOptions(calibration_batches=2, per_channel=False, equalize=True)


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
        quantize=OPTIONS,
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


def test_report_records_the_quantization_as_applied(int8_run) -> None:
    report, out = int8_run
    saved = json.loads((out / "report.json").read_text())["settings"]["quantize"]
    assert saved == report["settings"]["quantize"]
    assert saved == {
        "method": "minmax",
        "calibration_batches": 2,
        "per_channel": False,
        "equalize": True,
        "precision": "int8",
        "percentile": 99.999,
        "calibration_images": 16,  # calibration_batches x verify.batch (8) training images
        "calibration_batch_sizes": [8, 8],
        "onnxruntime": {
            "quant_format": "QDQ",
            "per_channel": False,
            "activation_type": "QUInt8",
            "weight_type": "QInt8",
            "calibrate_method": "MinMax",
            "extra_options": {
                "WeightSymmetric": True,
                "ActivationSymmetric": False,
                "CalibStridedMinMax": 1,  # one batch per calibration step: bounded memory
            },
        },
    }


def test_the_written_model_shows_the_recorded_options(int8_run) -> None:
    _, out = int8_run
    int8 = out / "model.int8.onnx"
    # per_channel=false: one weight scale per Conv.
    assert all(s.shape == () for s in weight_scales(int8))
    # minmax on the 16 calibration images: the input grid spans exactly their range.
    loader = real_loaders("digits", None, SIZE, 3, {"train": ("train", 16)}, batch=8)["train"]
    train = torch.cat([x for x, _ in loader])
    scale, zero = uint8_range_qparams(float(train.min()), float(train.max()))
    assert input_qparams(int8) == (pytest.approx(scale, rel=1e-6), zero)
    # equalize=true: the int8 weights are rescaled, not the fp32 export's rounded to the grid
    # (that would leave every weight within half a step of the export's).
    written, exported = int8_weights(int8), fp32_weights(out / "model.onnx")
    steps_off = [
        float(np.abs(q - w).max() / (np.abs(w).max() / 127))
        for q, w in zip(written, exported, strict=True)
    ]
    assert min(steps_off) > 10, steps_off


def test_more_calibration_batches_reach_a_larger_activation(tmp_path: Path) -> None:
    images = torch.linspace(-1, 1, 12 * 3 * 8 * 8).reshape(12, 3, 8, 8)
    images[5, 1, 4, 4] = 9.0  # in the second batch of 4 only
    labels = torch.zeros(12, dtype=torch.long)
    real = {  # deploy's loaders: verify.batch (4) images per batch
        "train": DataLoader(TensorDataset(images, labels), batch_size=4),
        "val": DataLoader(TensorDataset(images[:4], labels[:4]), batch_size=4),
    }
    grids, used = {}, {}
    for batches in (1, 2, 3):
        options = DeployOptions(
            verify_data="digits",
            verify_batch=4,
            batch_sizes=(),
            quantize=QuantOptions(calibration_batches=batches),
        )
        folder = tmp_path / str(batches)
        folder.mkdir()
        result = quantize(small_plain_net(), real, options, folder)
        grids[batches] = input_qparams(folder / result.files["int8_onnx"])
        used[batches] = result.settings["calibration_images"]
    assert used == {1: 4, 2: 8, 3: 12}
    for batches, grid in grids.items():
        first = images[: 4 * batches]
        scale, zero = uint8_range_qparams(float(first.min()), float(first.max()))
        assert grid == (pytest.approx(scale, rel=1e-6), zero), batches
    # One batch misses the large activation; two and three see it: a 5x coarser input step.
    assert grids[2][0] > 4 * grids[1][0] and grids[3] == grids[2]


def whole_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All images and labels of a digits split, as deploy reads them."""
    loader = real_loaders("digits", None, SIZE, 3, {split: (split, None)}, batch=64)[split]
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def test_reported_agreement_is_what_onnx_runtime_gives_on_the_whole_split(int8_run) -> None:
    report, out = int8_run
    m = report["metrics"]
    images, labels = whole_split("val")
    int8 = OnnxRunner(out / "model.int8.onnx")(images).argmax(dim=1)
    fp32 = OnnxRunner(out / "model.onnx")(images).argmax(dim=1)
    assert m["quant/int8/top1_agree"] == pytest.approx(float((int8 == fp32).double().mean()))
    assert m["quant/int8/val/acc"] == pytest.approx(float((int8 == labels).double().mean()))
    assert len(labels) == m["quant/int8/images"]  # the whole validation split, not a subset
    assert m["quant/latency/b1/int8_over_fp32"] > 0
    assert len(labels) == 269  # digits' validation split
    images, labels = whole_split("test")
    int8 = OnnxRunner(out / "model.int8.onnx")(images).argmax(dim=1)
    assert m["quant/int8/test/acc"] == pytest.approx(float((int8 == labels).double().mean()))


def _has_entry(runner: OnnxRunner) -> bool:
    options = runner.session.get_session_options()
    try:
        return options.get_session_config_entry(EXACT_INT8[0]) == EXACT_INT8[1]
    except RuntimeError:  # ONNX Runtime's answer for an entry that was never set
        return False


def test_int8_is_measured_with_exact_arithmetic_on_any_x86_cpu(int8_run) -> None:
    # Without VNNI, ONNX Runtime's default u8 x s8 kernels saturate (tests/quant/margins.py);
    # the entry makes them exact there. With VNNI the default kernels are exact already (and
    # faster), so the runner sets it only without VNNI; either way its outputs equal those of
    # a session that has the entry.
    _, out = int8_run
    runner = OnnxRunner(out / "model.int8.onnx")
    assert _has_entry(runner) == (not cpu_has_vnni())
    assert EXACT_INT8 == ("session.x64quantprecision", "1")
    images, _ = whole_split("val")
    exact = onnxruntime.SessionOptions()
    exact.add_session_config_entry(*EXACT_INT8)
    session = onnxruntime.InferenceSession(
        str(out / "model.int8.onnx"), sess_options=exact, providers=["CPUExecutionProvider"]
    )
    expected = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    assert np.array_equal(runner(images).numpy(), expected)


def test_vnni_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    flags = "processor\t: 0\nflags\t\t: fpu sse2 avx2 {}\n"
    for extra, vnni in (("avx512_vnni", True), ("avx_vnni", True), ("avx512bw", False)):
        path = tmp_path / extra
        path.write_text(flags.format(extra))
        assert cpu_has_vnni(str(path)) is vnni
    assert cpu_has_vnni(str(tmp_path / "missing")) is False  # unknown: stay exact


def test_without_verify_data_quantize_is_refused_before_any_work(tmp_path: Path, a0) -> None:
    from repvgg_lab.errors import DeployError

    ckpt = lightning_checkpoint(a0, tmp_path / "a0.ckpt")
    with pytest.raises(DeployError, match="quantize=int8 needs real images"):
        deploy(ckpt, out_dir=tmp_path / "out", quantize=QuantOptions())
    assert not (tmp_path / "out").exists()
