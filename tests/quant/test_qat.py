"""QAT on the planted-outlier digits net with per-tensor weights: int8 accuracy measured in ONNX
Runtime must recover at least half of what post-training quantization lost."""

import pytest
import torch

from repvgg_lab.errors import QuantizationError
from repvgg_lab.quant import (
    QuantOptions,
    evaluate_int8,
    export_qat,
    int8_deploy,
    plant_outlier,
    qat_finetune,
    quantize_net,
)
from repvgg_lab.quant.qat import FakeQuantNet

PER_TENSOR = QuantOptions(per_channel=False)


def test_qat_recovers_half_the_per_tensor_drop(digits, trained_plain, calib, test_split, tmp_path):
    images, labels = test_split
    planted = plant_outlier(trained_plain, 8, 0, 50.0)
    before = planted.features[8].conv.weight.detach().clone()
    metrics = evaluate_int8(
        quantize_net(planted, tmp_path / "ptq.onnx", calib, PER_TENSOR), planted, images, labels
    )
    fp32, ptq = metrics["quant/fp32/test/acc"], metrics["quant/int8/test/acc"]
    drop = fp32 - ptq
    assert drop > 0.10, f"the planted outlier must cost accuracy first (fp32 {fp32}, int8 {ptq})"
    tuned = qat_finetune(
        planted,
        digits.train_dataloader(),
        epochs=2,
        lr=1e-4,
        options=PER_TENSOR,
        calibration_images=calib,
    )
    out = export_qat(tuned, tmp_path / "qat.onnx", calib, PER_TENSOR)
    qat = evaluate_int8(out, planted, images, labels, prefix="quant/qat")
    assert qat["quant/qat/test/acc"] >= ptq + drop / 2, (fp32, ptq, qat)
    assert qat["quant/qat/top1_agree"] > metrics["quant/int8/top1_agree"]
    # The pipeline's one call gives the same int8 model and numbers.
    files = ("model.qat.int8.onnx", "quant_layers.qat.json")
    again = int8_deploy(
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
    assert again["quant/qat/test/acc"] == qat["quant/qat/test/acc"]
    assert (tmp_path / files[1]).exists()
    # Fine-tuning works on a copy.
    assert torch.equal(planted.features[8].conv.weight, before)


def test_fake_quant_net_tracks_ranges_and_matches_fp32_closely(trained_plain, calib):
    model = FakeQuantNet(trained_plain, per_channel=True)
    model.calibrate(torch.split(calib[:64], 32))
    low, high = model.layers[0].observer.range()
    assert low == pytest.approx(float(calib[:64].min())) and high == pytest.approx(
        float(calib[:64].max())
    )
    model.eval()
    with torch.no_grad():
        agree = (model(calib[:64]).argmax(1) == trained_plain(calib[:64]).argmax(1)).double()
    assert float(agree.mean()) >= 0.95


def test_qat_refuses_bad_settings(trained_plain):
    with pytest.raises(QuantizationError, match="epochs >= 1 and lr > 0"):
        qat_finetune(trained_plain, [], epochs=0)
    with pytest.raises(QuantizationError, match=r"\(images, labels\)"):
        qat_finetune(trained_plain, [torch.zeros(2, 3, 32, 32)], epochs=1)
