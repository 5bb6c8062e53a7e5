"""QAT on the planted-outlier digits net with per-tensor weights: int8 accuracy measured in ONNX
Runtime must recover at least half of what post-training quantization lost. Counts are made here
with a bare ONNX Runtime session; margins: tests/quant/margins.py."""

import numpy as np
import pytest
import torch

from repvgg_lab.errors import QuantizationError
from repvgg_lab.quant import (
    QuantOptions,
    export_qat,
    int8_deploy,
    qat_finetune,
    quantize_net,
)
from repvgg_lab.quant.qat import FakeQuantNet
from tests.helpers.digits_net import PLANT_LAYER
from tests.helpers.qdq import ort_predictions, torch_predictions
from tests.quant.margins import FAKE_QUANT_DISAGREE, PLANTED_DROP

PER_TENSOR = QuantOptions(per_channel=False)


def test_qat_recovers_half_the_per_tensor_drop(digits, planted, calib, test_split, tmp_path):
    images, labels = test_split
    truth, n = labels.numpy(), len(labels)
    before = planted.features[PLANT_LAYER].conv.weight.detach().clone()
    fp32 = torch_predictions(planted, images)
    ptq = ort_predictions(quantize_net(planted, tmp_path / "ptq.onnx", calib, PER_TENSOR), images)
    drop = int(np.sum(fp32 == truth)) - int(np.sum(ptq == truth))
    assert drop >= PLANTED_DROP, f"the planted outlier must cost accuracy first ({drop} images)"
    torch.manual_seed(0)  # the loader's shuffle: the same whichever tests ran before
    tuned = qat_finetune(
        planted,
        digits.train_dataloader(),
        epochs=2,
        lr=1e-4,
        options=PER_TENSOR,
        calibration_images=calib,
    )
    qat = ort_predictions(export_qat(tuned, tmp_path / "qat.onnx", calib, PER_TENSOR), images)
    # In images: QAT wins back at least half the drop, and agrees with fp32 more than PTQ did.
    assert np.sum(qat == truth) - np.sum(ptq == truth) >= drop / 2, (drop, np.sum(qat == truth))
    assert np.sum(qat == fp32) > np.sum(ptq == fp32)
    # The pipeline's one call writes the int8 model and reports what ONNX Runtime gives on it.
    files = ("model.qat.int8.onnx", "quant_layers.qat.json")
    metrics = int8_deploy(
        tuned,
        tmp_path,
        calib,
        images,
        labels,
        PER_TENSOR,
        reference=planted,
        prefix="quant/qat",
        files=files,
    )
    written = ort_predictions(tmp_path / files[0], images)
    assert metrics["quant/qat/test/acc"] == pytest.approx(np.sum(written == truth) / n)
    assert metrics["quant/qat/top1_agree"] == pytest.approx(np.sum(written == fp32) / n)
    assert metrics["quant/fp32/test/acc"] == pytest.approx(np.sum(fp32 == truth) / n)
    assert (tmp_path / files[1]).exists()
    # Fine-tuning works on a copy.
    assert torch.equal(planted.features[PLANT_LAYER].conv.weight, before)


def test_fake_quant_net_tracks_ranges_and_matches_fp32_closely(trained_plain, calib):
    model = FakeQuantNet(trained_plain, per_channel=True)
    model.calibrate(torch.split(calib[:64], 32))
    low, high = model.layers[0].observer.range()
    assert low == pytest.approx(float(calib[:64].min())) and high == pytest.approx(
        float(calib[:64].max())
    )
    model.eval()
    with torch.no_grad():
        agree = (model(calib[:64]).argmax(1) == trained_plain(calib[:64]).argmax(1)).sum()
    assert 64 - int(agree) <= FAKE_QUANT_DISAGREE


def test_qat_refuses_bad_settings(trained_plain):
    with pytest.raises(QuantizationError, match="epochs >= 1 and lr > 0"):
        qat_finetune(trained_plain, [], epochs=0)
    with pytest.raises(QuantizationError, match=r"\(images, labels\)"):
        qat_finetune(trained_plain, [torch.zeros(2, 3, 32, 32)], epochs=1)
