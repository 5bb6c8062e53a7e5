"""The any-CNN branch study on fake runs: the change against plain training, the worst drift,
the deployed-net comparison, and the rendered table."""

from __future__ import annotations

import pytest

from repvgg_lab.studies import any_cnn

PLAIN = {"features.0.weight": [16, 3, 3, 3], "fc.weight": [10, 64]}


def _run(test: float, val: float, drift: float, shapes=PLAIN, params_train: int = 100) -> dict:
    metrics = {
        "deploy/test/acc": test,
        "deploy/val/acc": val,
        "drift/vs_fp64/deploy_rel_max": drift,
        "drift/vs_fp64/train_rel_max": drift / 2,
        "params/train": params_train,
        "params/deploy": 50,
        "macs/deploy": 1000,
    }
    return {"metrics": metrics, "wall_s": 10.0, "shapes": dict(shapes)}


def _runs(dbb_shapes=PLAIN) -> dict:
    return {
        "none": {"0": _run(0.95, 0.94, 1e-7), "1": _run(0.97, 0.96, 2e-7)},
        "dbb": {
            "0": _run(0.97, 0.95, 3e-7, params_train=300),
            "1": _run(0.98, 0.96, 5e-7, dbb_shapes, params_train=300),
        },
    }


def test_summary_compares_each_branch_set_with_plain_training() -> None:
    s = any_cnn.Settings(seeds=[0, 1], branches=["none", "dbb"], modes=["offline"])
    summary = any_cnn.summarize(s, _runs())
    dbb = summary["dbb"]
    assert dbb["deploy/test/acc"]["mean"] == pytest.approx(0.975)
    assert dbb["deploy/test/acc delta_points"] == pytest.approx(1.5)
    assert dbb["deploy/val/acc delta_points"] == pytest.approx(0.5)
    assert dbb["drift/vs_fp64/deploy_rel_max"] == 5e-7
    assert dbb["params/train"] == 300 and dbb["same_deployed_net"] is True
    assert summary["none"]["deploy/test/acc delta_points"] == 0.0


def test_a_deployed_net_that_differs_from_the_plain_one_is_flagged_in_the_table() -> None:
    s = any_cnn.Settings(seeds=[0, 1], branches=["none", "dbb"], modes=["offline"])
    other = {**PLAIN, "features.0.bias": [16]}
    summary = any_cnn.summarize(s, _runs(dbb_shapes=other))
    assert summary["dbb"]["same_deployed_net"] is False
    record = {
        "command": "python scripts/any_cnn.py",
        "date": "2026-11-26T00:00:00",
        "machine": {"cpu": "test cpu"},
        "results": {"settings": vars(s), "summary": summary},
    }
    text = any_cnn.render(record)
    assert "| dbb | 0.9750 ± 0.0071 | 1.50 |" in text
    assert "**no**" in text and "2 seeds, 20 epochs each, 1 CPU thread(s) per run" in text
    with pytest.raises(ValueError, match="include 'none'"):
        any_cnn.run(any_cnn.Settings(branches=["dbb"]))


def test_each_branch_set_is_trained_in_each_mode_after_plain() -> None:
    s = any_cnn.Settings(branches=["none", "acb", "dbb"])
    assert any_cnn.variants(s) == [
        ("none", "none", "offline"),
        ("acb", "acb", "offline"),
        ("acb_online", "acb", "online"),
        ("dbb", "dbb", "offline"),
        ("dbb_online", "dbb", "online"),
    ]
