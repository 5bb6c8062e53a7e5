"""The int8 study: one run studied end to end (slow), and its tables rendered from a record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from repvgg_lab.data import DigitsDataModule
from repvgg_lab.studies import quant_study
from tests.helpers.digits_net import IMG, WIDTHS, train_digits
from tests.helpers.qdq import torch_correct
from tests.quant.margins import FP32_MIN, PER_CHANNEL_ALLOW, PER_TENSOR_ALLOW, QAT_ALLOW


def _record() -> dict:
    def run(model: str, seed: int, fp32: float, drop: float) -> dict:
        ptq = {
            quant_study._variant(m, pc): {"acc": fp32 - drop * (not pc)}
            for m, pc in quant_study.VARIANTS
        }
        worst = {
            "name": "features.9",
            "sqnr_db": 12.5,
            "weight_max_over_std": 80.0,
            "channel_range_ratio": 3.0,
            "input_max": 9.0,
            "cause": "weights",
        }
        return {
            "model": model,
            "seed": seed,
            "ptq": {**ptq, "fp32": {"acc": fp32}},
            "qat": {"acc": fp32 - drop / 4},
            "worst_layers": [worst],
        }

    runs = [run("repvgg_a0", s, 0.98 + s / 100, 0.1) for s in range(3)]
    runs += [run("qarepvgg_a0", s, 0.97, 0.0) for s in range(3)]
    speed = {
        "quant/latency/b1/fp32_ms": 50.0,
        "quant/latency/b1/int8_ms": 20.0,
        "quant/latency/b1/int8_over_fp32": 0.4,
    }
    params = {"qarepvgg_a0": {"train": 9103304, "deploy": 8309384}}
    results = {"runs": runs, "speed": speed, "params": params}
    return {"results": results, "machine": {"cpu": "cpu", "threads": 2}}


def test_accuracy_table_gives_median_and_spread_per_model() -> None:
    text = quant_study.render_accuracy(_record())
    assert "| repvgg_a0 (3 seeds) | qarepvgg_a0 (3 seeds) |" in text
    assert "| fp32 | 99.0 [98.0–100.0] | 97.0 [97.0–97.0] |" in text
    assert "| PTQ minmax/per_tensor | 89.0 [88.0–90.0] | 97.0 [97.0–97.0] |" in text


def test_drop_layers_and_speed_tables() -> None:
    record = _record()
    assert "| minmax/per_tensor | +10.00 | +0.00 |" in quant_study.render_drop(record)
    assert (
        "| repvgg_a0 | 0 | features.9 | 12.5 | 80 | 3.0 | weights |"
        in quant_study.render_layers(record)
    )
    assert "| 1 | 50.0 | 20.0 | 0.40x |" in quant_study.render_speed(record)
    assert "| qarepvgg_a0 | 9,103,304 | 8,309,384 |" in quant_study.render_params(record)


def test_parameter_counts_match_the_models_and_the_deploy_form_equals_repvgg() -> None:
    from repvgg_lab.models import create_model
    from repvgg_lab.utils import count_params

    counts = quant_study.param_counts()
    assert len(counts) == 13
    assert counts["qarepvgg_a0"]["deploy"] == count_params(create_model("repvgg_a0", deploy=True))
    assert counts["qarepvgg_a0"]["train"] == count_params(create_model("qarepvgg_a0"))


@pytest.mark.slow
def test_one_run_is_studied_end_to_end(tmp_path: Path) -> None:
    run_dir = tmp_path / "0_repvgg_a0_seed0"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"model": {"model_name": "repvgg_a0"}, "seed": 0})
    )
    with torch.random.fork_rng():
        net = train_digits()  # the int8 tests' digits net: its accuracies have known margins
    hparams = {
        "model_name": "repvgg_a0",
        "num_classes": 10,
        "input_size": IMG,
        "model_kwargs": {"widths": list(WIDTHS)},
    }
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "hyper_parameters": hparams,
            "pytorch-lightning_version": "2.6",
        },
        run_dir / "checkpoints" / "last.ckpt",
    )
    results = quant_study.run(tmp_path, speed=False)
    (row,) = results["runs"]
    assert row["model"] == "repvgg_a0" and row["seed"] == 0
    assert set(row["ptq"]) == {
        "fp32",
        *(quant_study._variant(m, pc) for m, pc in quant_study.VARIANTS),
    }
    # fp32 accuracy counted here, on the same test split, with the trained net itself.
    dm = DigitsDataModule(img_size=IMG, in_channels=3)
    dm.setup()
    images, labels = dm.fixed_batch("test", None)
    n, fp32 = len(labels), torch_correct(net, images, labels)
    assert row["ptq"]["fp32"]["acc"] == pytest.approx(fp32 / n) and fp32 >= FP32_MIN
    # Each variant, in images against that count: the int8 margins of tests/quant.
    for method, per_channel in quant_study.VARIANTS:
        allow = PER_CHANNEL_ALLOW if per_channel else PER_TENSOR_ALLOW
        correct = round(row["ptq"][quant_study._variant(method, per_channel)]["acc"] * n)
        assert correct >= fp32 - allow, (method, per_channel, correct, fp32)
    assert round(row["qat"]["acc"] * n) >= fp32 - QAT_ALLOW
    assert (
        len(row["worst_layers"]) == 3
        and row["worst_layers"][0]["sqnr_db"] <= row["worst_layers"][1]["sqnr_db"]
    )
