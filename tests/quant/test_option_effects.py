"""Each quantization option proven by its effect on the written QDQ model: the scales and zero
points read back from the ONNX file with the `onnx` package must move the way the option says,
against values worked out here from the calibration images and the fp32 weights.

The activation checks read the graph input's quantization: its calibration data are the images
themselves, so the expected range is exact on any CPU (no kernel arithmetic in between)."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from repvgg_lab.quant import QuantOptions, quantize_net, quantize_onnx
from tests.helpers.qdq import (
    fp32_weights,
    input_qparams,
    int8_weights,
    small_plain_net,
    uint8_range_qparams,
    weight_scales,
)

OUTLIER = 1000.0  # one pixel, hundreds of times the digits' largest normalized value


@pytest.fixture(scope="module")
def with_outlier(calib: torch.Tensor) -> torch.Tensor:
    """The 256 calibration images with one outlier pixel in the last image: 1 value in 786,432,
    well under the 5e-6 a side that percentile 99.999 cuts (about 4 values)."""
    images = calib.clone()
    images[-1, 0, 16, 16] = OUTLIER
    return images


def test_method_decides_whether_an_outlier_sets_the_activation_range(
    fp32_onnx, calib, with_outlier, tmp_path
) -> None:
    grids = {
        method: input_qparams(
            quantize_onnx(
                fp32_onnx, tmp_path / f"{method}.onnx", with_outlier, QuantOptions(method=method)
            )
        )
        for method in ("minmax", "percentile")
    }
    # MinMax: exactly the images' min and max, the outlier included.
    expected = uint8_range_qparams(float(with_outlier.min()), OUTLIER)
    assert grids["minmax"][0] == pytest.approx(expected[0], rel=1e-6)
    assert grids["minmax"][1] == expected[1]
    # Percentile cuts the single outlier: its range ends near the clean images' top, two orders
    # of magnitude below it, so its step is that much finer.
    scale, zero = grids["percentile"]
    high = (255 - zero) * scale
    assert float(calib.max()) / 2 < high < OUTLIER / 50, grids
    assert scale < grids["minmax"][0] / 50 and zero != grids["minmax"][1]


def test_entropy_is_minmax_on_one_batch_and_searches_once_batches_widen_it(
    fp32_onnx, calib, tmp_path
) -> None:
    """quantize_static builds ONNX Runtime's entropy calibrator with as many histogram bins as
    quantized bins (128, no option to change it): over one batch its KL search has a single
    candidate, the whole range, and `quantize.method=entropy` writes MinMax's scales. The
    project calibrates one batch per step (bounded memory); a later batch that widens a
    tensor's range adds bins of the first batch's width, the histogram outgrows 128 bins and
    the search can settle on a narrower range, never a wider one."""
    scales = {}
    for method, batches in (("minmax", 1), ("entropy", 1), ("minmax", 4), ("entropy", 4)):
        out = quantize_onnx(
            fp32_onnx,
            tmp_path / f"{method}{batches}.onnx",
            calib[:64],
            QuantOptions(method=method, calibration_batches=batches),
        )
        proto = onnx.load(str(out))
        inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        scales[method, batches] = [
            float(inits[n.input[1]]) for n in proto.graph.node if n.op_type == "QuantizeLinear"
        ]
    assert len(scales["minmax", 1]) > 22 and scales["entropy", 1] == scales["minmax", 1]
    pairs = list(zip(scales["entropy", 4], scales["minmax", 4], strict=True))
    assert all(e <= m * (1 + 1e-6) for e, m in pairs), pairs
    assert sum(e < m * (1 - 1e-3) for e, m in pairs) >= 1, pairs


def test_percentile_value_is_honoured(fp32_onnx, calib, tmp_path) -> None:
    highs = {}
    for kept in (99.999, 90.0):
        options = QuantOptions(method="percentile", percentile=kept)
        out = quantize_onnx(fp32_onnx, tmp_path / f"{kept}.onnx", calib, options)
        scale, zero = input_qparams(out)
        highs[kept] = (255 - zero) * scale  # the top of the input's uint8 grid
    # Keeping 90 % of the values clips the bright strokes that 99.999 % keeps.
    assert highs[90.0] < 0.9 * highs[99.999], highs


def test_per_channel_writes_one_scale_per_output_channel(fp32_onnx, calib, tmp_path) -> None:
    weights = fp32_weights(fp32_onnx)
    scales = {
        pc: weight_scales(
            quantize_onnx(fp32_onnx, tmp_path / f"{pc}.onnx", calib, QuantOptions(per_channel=pc))
        )
        for pc in (True, False)
    }
    spread = []
    for w, per_channel, per_tensor in zip(weights, scales[True], scales[False], strict=True):
        # Symmetric int8: max|w| / 127, per output channel or over the whole tensor.
        channel_max = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
        assert per_channel.shape == (w.shape[0],) and per_tensor.shape == ()
        np.testing.assert_allclose(per_channel, channel_max / 127, rtol=1e-6)
        np.testing.assert_allclose(per_tensor, np.abs(w).max() / 127, rtol=1e-6)
        spread.append(per_channel.min() / per_tensor)
    # Per-channel scales are not the per-tensor one repeated: some channels get a much finer step.
    assert min(spread) < 0.25, spread


def test_every_calibration_batch_is_read(fp32_onnx, calib, tmp_path) -> None:
    images = calib[:64].clone()
    images[-1, 0, 16, 16] = 40.0  # the largest activation, in the last of 4 batches only
    scales = {}
    for batches in (1, 4):
        options = QuantOptions(calibration_batches=batches)
        out = quantize_onnx(fp32_onnx, tmp_path / f"b{batches}.onnx", images, options)
        scales[batches] = input_qparams(out)
    expected = uint8_range_qparams(float(images.min()), 40.0)
    first_batch_only = uint8_range_qparams(float(images[:16].min()), float(images[:16].max()))
    # The images are split into `calibration_batches` batches, and every one of them is read.
    for batches, (scale, zero) in scales.items():
        assert scale == pytest.approx(expected[0], rel=1e-6), batches
        assert zero == expected[1]
    assert expected[0] > 5 * first_batch_only[0]


def test_equalize_rescales_the_weights_written(calib, tmp_path) -> None:
    net = small_plain_net()
    images = torch.nn.functional.interpolate(calib[:32], size=12)
    written = {
        eq: int8_weights(
            quantize_net(net, tmp_path / f"{eq}.onnx", images, QuantOptions(equalize=eq))
        )
        for eq in (False, True)
    }
    for i, layer in enumerate(net.features):
        w = layer.conv.weight.detach().double().numpy()
        step = np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127
        # Without equalization the int8 weights are the net's own, to half a step.
        off = np.abs(written[False][i] - w).reshape(w.shape[0], -1).max(axis=1)
        assert (off <= step / 2 + 1e-7).all()
        # With it, channels are rescaled (the function is kept, the weights are not).
        assert np.abs(written[True][i] - w).max() > 10 * step.max(), i
