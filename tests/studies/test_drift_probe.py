"""The drift probe's cases on tiny nets: what each measures, and how a case renders."""

import pytest
import torch

from repvgg_lab.studies import drift_probe
from repvgg_lab.studies.common import cell, render_table, table
from tests.helpers.cli import load_script

TINY = drift_probe.Settings(model="repvgg_a0", size=16, batch=2, seed=0, seeds=[0])


def _column(result: dict, header: str) -> list:
    names = [name for name, _ in result["columns"]]
    return [row[names.index(header)] for row in result["rows"]]


def test_underflow_case_reads_zero_drift_where_logits_are_the_bias():
    result = drift_probe.case_underflow(TINY)
    assert _column(result, "gamma") == ["1", "0.1", "0.01"]
    assert _column(result, "logits == fc bias") == ["False", "True", "True"]
    drift = _column(result, "drift rel_max")
    assert drift[0] > 0 and drift[1:] == [0.0, 0.0]
    # Per block the conversion is as accurate at every gamma (fp32 noise, well below 1e-5).
    for median, worst in _column(result, "per-block plain vs fp64 (median / max)"):
        assert 0 < median <= worst < 1e-5


def test_fusion_case_gives_correctly_rounded_kernels_and_timm_does_not():
    result = drift_probe.case_fusion(TINY)
    assert _column(result, "output") == ["logits", "pooled features"]
    notes = {label.rsplit(": ", 1)[-1]: value for label, value, _ in result["notes"]}
    assert notes["float64 fusion rounded once (ours)"] <= 2.0**-24
    assert notes["fp32 fusion (timm)"] > notes["float64 fusion rounded once (ours)"]


def test_bf16_case_drifts_at_bf16_rounding():
    fp32, bf16 = drift_probe.case_bf16(TINY)["rows"]
    assert (fp32[0], bf16[0]) == ("float32", "bfloat16")
    assert fp32[1] < 1e-5 < 1e-4 < bf16[1] < 0.1  # drift rel_max
    assert bf16[-1] == torch.finfo(torch.bfloat16).eps


def test_rmnet_case_fold_first_copies_the_reserved_channels_bit_exactly():
    result = drift_probe.case_rmnet(TINY)
    kept, ours = result["rows"]
    assert ours[1:4] == [0.0, 0.0, 0.0] and ours[4].startswith("0 of ")
    assert kept[1] > 0 and kept[3] <= 1.01  # at most about 1 ulp
    assert result["notes"][0][1] == "True"


def test_tf32_case_on_a_cpu_records_why_it_was_skipped():
    assert "CUDA" in drift_probe.case_tf32(TINY)["skipped"]
    assert "not measured" in drift_probe.render_case("tf32")(
        {"results": {"cases": {"tf32": drift_probe.case_tf32(TINY)}}}
    )


def test_run_refuses_an_unknown_case_and_render_case_formats_a_table():
    with pytest.raises(ValueError, match="unknown case 'fusoin'"):
        drift_probe.run(["fusoin"], TINY)
    record = {"title": "t", **table([("a", "s"), ("b", "e"), ("c", "pair")], [["x", 1.5, [1, 2]]])}
    assert render_table(record)[2] == "| x | 1.50e+00 | 1.0e+00 / 2.0e+00 |"
    body = drift_probe.render_case("report")(
        {"results": {"cases": {"report": {**record, "notes": [["n", 0.5, "pct"]]}}}}
    )
    assert body.splitlines()[0] == "t:" and body.endswith("- n: 50.0%")
    assert cell(None, "e") == "-"


def test_probe_cli_writes_a_results_file(tmp_path, capsys):
    out = tmp_path / "drift_probe.json"
    argv = ["underflow", "tf32", "--model", "repvgg_a0", "--size", "16", "--results", str(out)]
    assert load_script("drift_probe").main(argv) == 0
    text = capsys.readouterr().out
    assert "## underflow" in text and "## tf32" in text and out.is_file()
    with pytest.raises(SystemExit):
        load_script("drift_probe").main(["nonsense"])
