"""measure_drift: stable metric names, honest numbers, per-block localisation, underflow flag."""

from __future__ import annotations

import logging

import pytest
import torch

from repvgg_lab.models import RepVGGBlock, create_model, measure_drift, reparameterize
from repvgg_lab.models.init import bn_gamma
from repvgg_lab.reparam import tolerance
from tests.helpers.contract import DRIFT_METRICS

METRICS = set(DRIFT_METRICS)
BLOCK_METRICS = {"train_rel_max", "deploy_rel_max", "rel_max"}


def _block_names(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, RepVGGBlock)]


@pytest.fixture
def converted(trained):
    model = trained("repvgg_a0", seed=5)
    return model, reparameterize(model)


def test_metric_names_and_per_block_breakdown(converted) -> None:
    model, plain = converted
    report = measure_drift(model, plain, torch.randn(2, 3, 32, 32))
    assert set(report.metrics()) == METRICS
    assert set(report.metrics(prefix="deploy/drift/")) == {"deploy/" + k for k in METRICS}
    names = _block_names(model)
    assert list(report.blocks) == names and len(names) == 22
    assert all(set(v) == BLOCK_METRICS for v in report.blocks.values())
    flat = report.metrics(per_block=True)
    assert set(flat) == METRICS | {f"drift/block/{n}/{k}" for n in names for k in BLOCK_METRICS}
    assert report.dtype == "float32"


def test_a_correct_conversion_drifts_at_the_fp32_floor(converted) -> None:
    model, plain = converted
    report = measure_drift(model, plain, torch.randn(4, 3, 32, 32))
    assert report.top1_agree == 1.0 and report.underflow_frac == 0.0 and not report.underflow
    # fp32 is not exact, and a correct conversion is within a few ulps per block.
    for value in (report.rel_max, report.train_rel_max, report.deploy_rel_max):
        assert 0 < value < 2e-5
    assert report.max_abs > 0
    for values in report.blocks.values():
        assert 0 < values["deploy_rel_max"] < 5e-6 and values["train_rel_max"] < 5e-6


def test_identical_nets_have_zero_drift(converted) -> None:
    model, _ = converted
    report = measure_drift(model, model, torch.randn(2, 3, 32, 32))
    assert report.max_abs == report.rel_max == 0.0 and report.top1_agree == 1.0
    assert report.train_rel_max == report.deploy_rel_max > 0  # fp32 vs the fp64 truth is not 0
    assert all(v["rel_max"] == 0.0 for v in report.blocks.values())


def test_per_block_numbers_point_at_a_broken_block(converted) -> None:
    model, plain = converted
    with torch.no_grad():
        plain.stages[2][5].reparam_conv.bias.add_(0.05)
    report = measure_drift(model, plain, torch.randn(2, 3, 32, 32))
    assert report.rel_max > 1e-3 and report.deploy_rel_max > 1e-3
    assert report.train_rel_max < 2e-5  # the source itself is fine
    worst = max(report.blocks, key=lambda n: report.blocks[n]["deploy_rel_max"])
    assert worst == "stages.2.5"
    others = [v["deploy_rel_max"] for n, v in report.blocks.items() if n != worst]
    assert max(others) < 5e-6


def test_modes_and_statistics_are_restored(converted) -> None:
    model, plain = converted
    model.train()
    model.stages[3].eval()
    plain.train()
    flags = {m: m.training for net in (model, plain) for m in net.modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = measure_drift(model, plain, torch.randn(2, 3, 32, 32))
    assert {m: m.training for net in (model, plain) for m in net.modules()} == flags
    for key, value in model.state_dict().items():  # no train-mode forward touched the BN stats
        assert torch.equal(value, state[key]), key
    assert report.rel_max < 2e-5  # and the numbers are eval-mode numbers


def test_small_init_gamma_is_flagged_as_underflow(caplog) -> None:
    # A fresh net (mean 0, var 1) at init gamma 0.01 shrinks the signal ~100x per block: 22 blocks
    # take fp32 below its normal range.
    model = bn_gamma(create_model("repvgg_a0", num_classes=10), 0.01).eval()
    plain = reparameterize(model)
    with caplog.at_level(logging.WARNING, logger="repvgg_lab"):
        report = measure_drift(model, plain, torch.randn(2, 3, 32, 32))
    assert report.underflow and 0 < report.underflow_frac < 1
    assert "underflow" in caplog.text
    # End to end the logits are just the classifier bias: a meaningless zero drift...
    assert report.rel_max == 0.0
    # ...while every block, fed a unit-scale input, shows the usual fp32 floor.
    for values in report.blocks.values():
        assert 0 < values["deploy_rel_max"] < 5e-6


@pytest.mark.parametrize("init", ["trained", "fresh_gamma_1"])
def test_normal_bn_has_no_underflow(trained, init) -> None:
    if init == "trained":
        model = trained("repvgg_a0")
    else:
        model = bn_gamma(create_model("repvgg_a0", num_classes=10), 1.0).eval()
    report = measure_drift(model, reparameterize(model), torch.randn(2, 3, 32, 32))
    assert report.underflow_frac == 0.0 and not report.underflow


def test_bfloat16_drift_is_reported_in_bfloat16(trained) -> None:
    model = trained("repvgg_a0").to(torch.bfloat16)
    report = measure_drift(model, reparameterize(model), torch.randn(2, 3, 32, 32))
    assert report.dtype == "bfloat16"
    assert report.deploy_rel_max < tolerance(torch.bfloat16)
    assert report.deploy_rel_max > 1e-4  # bf16 really is coarser than fp32
