"""Outlier planting and cross-layer equalization keep the fp32 function; the per-layer report
names the planted layer; equalization undoes the outlier under per-tensor int8 in ONNX Runtime.
Margins (images, dB) and the measurements behind them: tests/quant/margins.py."""

import json
import logging

import pytest
import torch
from torch import nn

from repvgg_lab.errors import QuantizationError
from repvgg_lab.quant import (
    QuantOptions,
    equalize,
    evaluate_int8,
    layer_report,
    plant_outlier,
    quantize_net,
    weight_outliers,
    write_layer_report,
)
from repvgg_lab.reparam import rel_max
from repvgg_lab.testing import trained_like
from tests.helpers.digits_net import PLANT_LAYER
from tests.helpers.qdq import ort_correct, torch_correct
from tests.helpers.qdq import small_plain_net as _small_net
from tests.quant.margins import (
    PER_CHANNEL_WEIGHT_GAIN_DB,
    PER_TENSOR_ALLOW,
    PLANTED_DROP,
    PLANTED_SQNR_DROP_DB,
    RECOVERED_SHARE,
)

PER_TENSOR = QuantOptions(per_channel=False)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_plant_keeps_the_function_and_leaves_the_input_alone(layer: int) -> None:
    net = _small_net(groups=(1, 2, 4))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    planted = plant_outlier(net, layer, channel=5, k=50.0)
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        assert rel_max(net(x), planted(x)) <= 1e-5
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    w0, w1 = net.features[layer].conv.weight, planted.features[layer].conv.weight
    assert torch.allclose(w1[5], 50 * w0[5])
    assert torch.equal(w1[:5], w0[:5])


def test_plant_accepts_a_train_form_repvgg() -> None:
    net = trained_like("repvgg_a0", num_classes=10, widths=(0.25, 0.25, 0.25, 0.5))
    planted = plant_outlier(net, 8, channel=0, k=50.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_max(net(x), planted(x)) <= 1e-5
    assert not net.stages[0][0].deploy


def test_plant_refuses_what_would_change_the_function() -> None:
    with pytest.raises(QuantizationError, match="ReLU6 activation"):
        plant_outlier(_small_net(act="ReLU6"), 0, 0, 10.0)
    with pytest.raises(QuantizationError, match=r"layer_index must be in \[0, 3\)"):
        plant_outlier(_small_net(), 3, 0, 10.0)
    with pytest.raises(QuantizationError, match="k must be > 0"):
        plant_outlier(_small_net(), 0, 0, -1.0)


def test_weight_outliers_see_a_whole_channel_scaled_up() -> None:
    net = _small_net()
    plain = weight_outliers(net.features[1].conv.weight)
    planted = weight_outliers(plant_outlier(net, 1, 2, 50.0).features[1].conv.weight)
    assert planted["weight_max_over_std"] > 2 * plain["weight_max_over_std"]
    assert planted["channel_range_ratio"] > 20 * plain["channel_range_ratio"]


def test_report_ranks_the_planted_layer_worst(trained_plain, planted, calib, tmp_path) -> None:
    clean = layer_report(trained_plain, calib[:64], PER_TENSOR)
    rows = layer_report(planted, calib[:64], PER_TENSOR)
    before = {r["layer"]: r for r in clean}
    row = next(r for r in rows if r["layer"] == PLANT_LAYER)
    assert clean[0]["layer"] != PLANT_LAYER
    # Worst of all but the stem: the stem's per-tensor weights are the clean net's own weak spot
    # (its SQNR varies with the training and can rank first even after planting).
    assert [r["layer"] for r in rows if r["layer"] != 0][0] == PLANT_LAYER and row["rank"] <= 2
    assert row["cause"].startswith("weights")
    assert row["sqnr_db"] < before[PLANT_LAYER]["sqnr_db"] - PLANTED_SQNR_DROP_DB
    assert [r["sqnr_db"] for r in rows] == sorted(r["sqnr_db"] for r in rows)
    assert sorted(r["layer"] for r in rows) == list(range(22))
    # Per-channel weights rescue the planted layer's weights, not its output range.
    per_channel = layer_report(planted, calib[:64])
    rescued = next(r for r in per_channel if r["layer"] == PLANT_LAYER)
    gain = rescued["sqnr_weights_only_db"] - row["sqnr_weights_only_db"]
    assert gain > PER_CHANNEL_WEIGHT_GAIN_DB
    path = write_layer_report(tmp_path / "quant_layers.json", rows)
    saved = json.loads(path.read_text())
    assert saved["worst"] == rows[0]["name"] and len(saved["layers"]) == 22


def test_equalize_keeps_the_function_and_balances_ranges() -> None:
    net = _small_net()
    eq = equalize(plant_outlier(net, 1, 3, 100.0))
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        assert rel_max(net(x), eq(x)) <= 1e-5
    for i in range(2):
        r1 = eq.features[i].conv.weight.flatten(1).abs().amax(dim=1)
        r2 = eq.features[i + 1].conv.weight.transpose(0, 1).flatten(1).abs().amax(dim=1)
        # Sweeps converge: the last pair equalized is exact, earlier ones close.
        assert torch.allclose(r1, r2, rtol=1e-5 if i == 1 else 0.1)
    assert weight_outliers(eq.features[1].conv.weight)["channel_absmax_ratio"] < 10


def test_equalize_skips_grouped_pairs_and_says_so(caplog) -> None:
    net = _small_net(groups=(1, 2, 1))
    with caplog.at_level(logging.INFO, logger="repvgg_lab.quant.equalize"):
        eq = equalize(net)
    assert "skipping layers 0-1 (groups 1 and 2" in caplog.text
    assert "skipping layers 1-2 (groups 2 and 1" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), eq.parameters(), strict=True))


def test_equalize_undoes_a_planted_outlier(
    trained_plain, planted, calib, test_split, tmp_path
) -> None:
    images, labels = test_split
    fp32 = torch_correct(trained_plain, images, labels)
    correct = {}
    for name, net, options in (
        ("clean", trained_plain, PER_TENSOR),
        ("planted", planted, PER_TENSOR),
        ("equalized", planted, QuantOptions(per_channel=False, equalize=True)),
    ):
        out = quantize_net(net, tmp_path / f"{name}.onnx", calib, options)
        correct[name] = ort_correct(out, images, labels)  # a bare ONNX Runtime session
        reported = evaluate_int8(out, trained_plain, images, labels)["quant/int8/test/acc"]
        assert reported == pytest.approx(correct[name] / len(labels))
    # In images of the test split, against the fp32 net: the outlier costs a clear margin
    # under per-tensor int8, equalization wins most of it back, to the clean net's level.
    assert correct["clean"] >= fp32 - PER_TENSOR_ALLOW
    assert correct["planted"] <= fp32 - PLANTED_DROP, correct
    assert correct["equalized"] >= fp32 - PER_TENSOR_ALLOW, (fp32, correct)
    drop = fp32 - correct["planted"]
    assert correct["equalized"] - correct["planted"] >= RECOVERED_SHARE * drop
    sqnr = {
        r["layer"]: r["sqnr_db"] for r in layer_report(equalize(planted), calib[:64], PER_TENSOR)
    }
    planted_rows = {r["layer"]: r["sqnr_db"] for r in layer_report(planted, calib[:64], PER_TENSOR)}
    assert sqnr[PLANT_LAYER] > planted_rows[PLANT_LAYER] + PLANTED_SQNR_DROP_DB


def test_equalize_refuses_a_net_without_plain_form() -> None:
    net = nn.Sequential()
    with pytest.raises(QuantizationError, match="no PlainNet form"):
        equalize(net)
