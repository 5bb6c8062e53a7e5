"""QARepVGG: the A/B family with QA blocks, its exact conversion, and everything downstream of the
deploy form (drift, pruning, checkpoints) working unchanged."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from repvgg_lab.errors import CheckpointError
from repvgg_lab.models import (
    MODELS,
    QARepVGGBlock,
    RepVGGBlock,
    RepVGGConfig,
    create_model,
    list_models,
    load_pretrained,
    measure_drift,
    read_checkpoint,
    reparameterize,
    save_weights,
)
from repvgg_lab.models.checkpoints import plain_metadata
from repvgg_lab.prune import as_plain_net, gate_parameters, prune_net
from repvgg_lab.reparam import rel_max
from repvgg_lab.testing import randomize_bn
from repvgg_lab.utils import count_params

QA_NAMES = sorted(n for n in list_models() if n.startswith("qarepvgg_"))
FAST = {"qarepvgg_a0", "qarepvgg_b0"}
# (train-form, deploy-form) parameter counts at num_classes=1000. The deploy forms are RepVGG's
# (paper counts); the train forms lack RepVGG's identity BN (2 per channel of every block with
# in == out and stride 1), its 1x1 BN being replaced by the one BN after the sum.
QA_PARAMS = {
    "qarepvgg_a0": (9_103_304, 8_309_384),
    "qarepvgg_a1": (14_084_712, 12_789_864),
    "qarepvgg_a2": (28_199_272, 25_499_944),
    "qarepvgg_b0": (15_808_616, 14_339_048),
    "qarepvgg_b1": (57_396_328, 51_829_480),
    "qarepvgg_b1g2": (45_763_688, 41_360_104),
    "qarepvgg_b1g4": (39_947_368, 36_125_416),
    "qarepvgg_b2": (88_999_016, 80_315_112),
    "qarepvgg_b2g2": (70_823_016, 63_956_712),
    "qarepvgg_b2g4": (61_735_016, 55_777_512),
    "qarepvgg_b3": (123_057_256, 110_960_872),
    "qarepvgg_b3g2": (96_883_816, 87_404_776),
    "qarepvgg_b3g4": (83_797_096, 75_626_728),
}


def _blocks(model: nn.Module) -> list[RepVGGBlock]:
    return [m for m in model.modules() if isinstance(m, RepVGGBlock)]


def _by_name(name: str):
    return name if name in FAST else pytest.param(name, marks=pytest.mark.slow)


def test_every_repvgg_a_b_variant_has_a_qa_twin_with_the_same_architecture() -> None:
    twins = {n: MODELS[n.removeprefix("qa")] for n in QA_NAMES}
    assert set(twins) == {
        f"qa{n}" for n, c in MODELS.items() if n.startswith("repvgg_") and not c.se
    }
    for name, repvgg in twins.items():
        assert MODELS[name] == dataclasses.replace(repvgg, block="qa") and repvgg.block == "repvgg"
    assert "qarepvgg_d2se" not in MODELS


def test_unknown_block_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown block 'qb'.*'qa'"):
        RepVGGConfig(depths=(1, 1, 1, 1), widths=(1, 1, 1, 1), block="qb")


@pytest.mark.parametrize("name", QA_NAMES)
def test_parameter_counts(name: str) -> None:
    with torch.device("meta"):
        train, deploy = create_model(name), create_model(name, deploy=True)
        rep_train, rep_deploy = create_model(name[2:]), create_model(name[2:], deploy=True)
    identity_channels = sum(b.out_channels for b in _blocks(rep_train) if b.has_identity)
    assert count_params(deploy) == count_params(rep_deploy)
    assert count_params(train) == count_params(rep_train) - 2 * identity_channels
    assert (count_params(train), count_params(deploy)) == QA_PARAMS[name]


def test_qa_block_layout_and_block_override() -> None:
    model = create_model("repvgg_a0", num_classes=5, block="qa")
    assert all(type(b) is QARepVGGBlock for b in _blocks(model)) and len(_blocks(model)) == 22
    block = model.stages[1][1]
    assert block.has_identity and isinstance(block.identity, nn.Identity)
    assert isinstance(block.conv_1x1, nn.Conv2d) and block.conv_1x1.bias is None
    assert isinstance(block.bn, nn.BatchNorm2d) and isinstance(block.conv_kxk.bn, nn.BatchNorm2d)
    assert model.stages[1][0].identity is None  # stride 2: no identity branch
    assert {k for k in block.state_dict() if "bn" not in k} == {
        "conv_kxk.conv.weight",
        "conv_1x1.weight",
    }


def test_deploy_form_is_repvggs() -> None:
    with torch.device("meta"):
        qa = create_model("qarepvgg_b1g4", deploy=True).state_dict()
        rep = create_model("repvgg_b1g4", deploy=True).state_dict()
    assert {k: v.shape for k, v in qa.items()} == {k: v.shape for k, v in rep.items()}


@pytest.mark.parametrize("name", [_by_name(n) for n in QA_NAMES])
def test_conversion_is_exact_in_float64_and_at_the_fp32_floor(name, trained, truth) -> None:
    """fp64: conversion error <= 1e-12; fp32: the plain net's error against the fp64 truth is
    within 3x the multi-branch net's own fp32 error (or 1e-5, whichever is larger)."""
    model = trained(name)
    x = torch.randn(2, 3, 32, 32)
    plain64 = reparameterize(copy.deepcopy(model).double())
    with torch.no_grad():
        assert rel_max(truth(model, x), plain64(x.double())) <= 1e-12
    plain = reparameterize(model)
    assert all(type(b) is QARepVGGBlock and b.deploy for b in _blocks(plain))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    report = measure_drift(model, plain, x, per_block=False)
    assert report.top1_agree == 1.0 and report.underflow_frac == 0.0
    assert report.deploy_rel_max <= max(3 * report.train_rel_max, 1e-5)


@pytest.mark.parametrize("overrides", [{"groups": 4}, {"in_channels": 1}, {"se": True}])
def test_grouped_grey_and_se_qa_nets_convert(overrides, trained, truth) -> None:
    model = trained("qarepvgg_a0", **overrides)
    x = torch.randn(2, overrides.get("in_channels", 3), 32, 32)
    with torch.no_grad():
        assert rel_max(truth(model, x), reparameterize(model)(x)) < 2e-5


def test_measure_drift_reports_every_qa_block(trained) -> None:
    model = trained("qarepvgg_a0", seed=3)
    report = measure_drift(model, reparameterize(model), torch.randn(2, 3, 32, 32))
    assert list(report.blocks) == [
        n for n, m in model.named_modules() if isinstance(m, RepVGGBlock)
    ]
    assert len(report.blocks) == 22 and report.top1_agree == 1.0
    assert all(0 < v["deploy_rel_max"] < 5e-6 for v in report.blocks.values())
    assert set(report.metrics()) >= {"drift/vs_fp64/deploy_rel_max", "drift/top1_agree"}


def test_block_reparameterizes_in_place_and_reads_running_stats() -> None:
    block = randomize_bn(QARepVGGBlock(8, 8, gate=True)).double().train()
    with torch.no_grad():
        block.gate.uniform_(-1, 1)
        block.gate[2] = 0.0
    k_train, b_train = block.get_equivalent_kernel_bias()
    k_eval, b_eval = block.eval().get_equivalent_kernel_bias()
    assert torch.equal(k_train, k_eval) and torch.equal(b_train, b_eval)
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        ref = block(x)
        block.reparameterize()
        assert rel_max(ref, block(x)) < 1e-13
    assert block.deploy and block.gate is None
    assert not any(hasattr(block, n) for n in ("conv_kxk", "conv_1x1", "identity", "bn"))
    assert bool((block.reparam_conv.weight[2] == 0).all()) and block.reparam_conv.bias[2] == 0


def test_gated_qa_net_prunes_exactly_its_zero_gates() -> None:
    config = dataclasses.replace(MODELS["qarepvgg_a0"], widths=(0.25, 0.25, 0.25, 0.5), gate=True)
    model = randomize_bn(config.build(num_classes=10)).double().eval()
    gen = torch.Generator().manual_seed(4)
    zeros = []
    with torch.no_grad():
        for g in gate_parameters(model):
            g.copy_(torch.rand(g.shape, generator=gen, dtype=torch.float64) + 0.5)
            off = torch.rand(g.shape, generator=gen) < 0.3
            g[off] = 0.0
            zeros.append(int(off.sum()))
    pruned, summary = prune_net(model, 33, threshold=0.0)
    assert summary["exact"] and [r["dead"] for r in summary["layers"]] == zeros
    assert summary["prune/params_after"] < summary["prune/params_before"]
    x = torch.randn(2, 3, 33, 33, dtype=torch.float64)
    with torch.no_grad():
        assert rel_max(model(x), as_plain_net(model)(x)) < 1e-12
        assert rel_max(model(x), pruned(x)) < 1e-12


def _lightning_file(model: nn.Module, name: str, path) -> None:
    state = {f"net.{k}": v for k, v in model.state_dict().items()}
    hparams = {"model_name": name, "num_classes": 10}
    torch.save(
        {"state_dict": state, "hyper_parameters": hparams, "pytorch-lightning_version": "2.6.0"},
        path,
    )


def test_own_checkpoints_load(trained, tmp_path) -> None:
    source = trained("qarepvgg_a0")
    _lightning_file(source, "qarepvgg_a0", tmp_path / "last.ckpt")
    ckpt = read_checkpoint(tmp_path / "last.ckpt")
    assert ckpt.format == "lightning" and ckpt.model_name == "qarepvgg_a0" and not ckpt.is_deploy
    loaded = load_pretrained(create_model(ckpt.model_name, num_classes=10), ckpt.state_dict)
    x = torch.randn(2, 3, 32, 32)
    plain = reparameterize(source)
    save_weights(plain, tmp_path / "plain.safetensors", plain_metadata(plain, model_name="qa"))
    deploy = load_pretrained(
        create_model("qarepvgg_a0", num_classes=10, deploy=True).eval(),
        tmp_path / "plain.safetensors",
    )
    save_weights(source, tmp_path / "train.safetensors")
    again = load_pretrained(
        create_model("qarepvgg_a0", num_classes=10).eval(), tmp_path / "train.safetensors"
    )
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), source(x)) and torch.equal(again(x), source(x))
        assert torch.equal(deploy(x), plain(x))
    with pytest.raises(CheckpointError, match="reparameterize"):
        load_pretrained(create_model("qarepvgg_a0", num_classes=10, deploy=True), ckpt.state_dict)
    with pytest.raises(CheckpointError, match="missing keys.*unexpected keys"):
        load_pretrained(create_model("repvgg_a0", num_classes=10), ckpt.state_dict)
