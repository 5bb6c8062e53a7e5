"""The RMNet cost study: the BN-folded baseline is the same function, counts, error and latency
records, and their doc blocks."""

import torch

from repvgg_lab.studies import rmnet_cost
from repvgg_lab.studies.common import images
from repvgg_lab.testing import trained_like
from tests.helpers.cli import load_script


def test_fold_bn_keeps_the_function_and_removes_every_bn():
    source = trained_like("rmnet_resnet18", 0, inputs=images(2, 32)).double()
    folded = rmnet_cost.fold_bn_keep_residual(source)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in source.modules())  # a copy
    x = images(2, 32, seed=1).double()
    with torch.no_grad():
        assert torch.allclose(folded(x), source(x), rtol=1e-10, atol=1e-10)


def test_costs_on_the_meta_device_match_the_documented_layouts():
    cost = rmnet_cost.costs("rmnet_resnet50", 224)
    ratio = {form: c["macs"] / cost["bnfold"]["macs"] for form, c in cost.items()}
    # Grouped bottleneck 3x3 (ours) under 4x; RMNet's dense layout over 11x.
    assert 3.5 < ratio["plain"] < 4.0 and ratio["rmnet"] > 11
    assert cost["source"]["macs"] == cost["bnfold"]["macs"]
    assert cost["plain"]["convs"] < cost["bnfold"]["convs"]


def test_run_records_drift_and_paired_latency_and_renders_them():
    res = rmnet_cost.run(["rmnet_mobilenet_v2"], 32, batches=(1,), runs=2, warmup=1, seeds=(0,))
    entry = res["models"]["rmnet_mobilenet_v2"]
    (drift,) = entry["drift"]
    assert drift["fp64_rel_max"] < 1e-10 and drift["uncapped_fp64_rel_max"] > 1e-6
    lat = entry["latency"]["1"]
    assert lat["ratio"]["bnfold"] == 1.0 and set(lat["median_ms"]) == {"source", "bnfold", "plain"}
    record = {"results": res, "machine": {"threads": 1}}
    assert "| MobileNetV2 | plain |" in rmnet_cost.render_cost(record)
    assert rmnet_cost.render_drift(record).count("| MobileNetV2 |") == 1
    latency = rmnet_cost.render_latency(record)
    assert "| MobileNetV2 | 1 |" in latency and "| 1.00 |" in latency


def test_renderers_say_what_a_counts_only_file_lacks(capsys, tmp_path):
    out = tmp_path / "rmnet_cost.json"
    argv = ["--models", "rmnet_resnet18", "--no-latency", "--json", str(out)]
    assert load_script("rmnet_cost").main(argv) == 0
    assert "| ResNet-18 | plain |" in capsys.readouterr().out
    from repvgg_lab.results import read_results

    record = read_results(out)
    assert "not measured" in rmnet_cost.render_drift(record)
    assert "not measured" in rmnet_cost.render_latency(record)
