"""The prune-scores study on a small converted RepVGG: every criterion meets the MAC target, the
results record renders its doc block, and the command line keeps its options and outputs."""

import json
from pathlib import Path

import pytest

from repvgg_lab.models import reparameterize, save_weights
from repvgg_lab.models.checkpoints import plain_metadata
from repvgg_lab.results import read_results
from repvgg_lab.studies import prune_scores
from repvgg_lab.testing import trained_like
from tests.helpers.cli import load_script


@pytest.fixture(scope="module")
def plain_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    plain = reparameterize(trained_like("repvgg_a0", 0, num_classes=10))
    path = tmp_path_factory.mktemp("plain") / "plain.safetensors"
    meta = plain_metadata(
        plain, model_name="repvgg_a0", num_classes=10, in_channels=3, input_size=16
    )
    save_weights(plain, path, meta)
    return path


def test_prune_scores_reports_every_criterion_at_the_target(plain_path, tmp_path, capsys):
    out, results = tmp_path / "rows.json", tmp_path / "prune_scores.json"
    args = [str(plain_path), "--targets", "0.3", "--calibration-batches", "2", "--batch-size", "8"]
    main = load_script("prune_scores").main
    assert main([*args, "--out", str(out), "--results", str(results)]) == 0
    rows = json.loads(out.read_text())
    assert [r["criterion"] for r in rows][0] == "unpruned" and len(rows) == 1 + 4
    for r in rows[1:]:
        assert r["macs_cut"] >= 0.3 and all(0.0 <= a <= 1.0 for a in r["acc"])
        assert r["recalibrated"] == r["criterion"].endswith("+ recalibration")
    table = capsys.readouterr().out
    assert "16 training images" in table
    assert all(f"| {r['criterion']} | {100 * r['macs_cut']:.1f} |" in table for r in rows)
    record = read_results(results)
    assert record["command"].startswith("python") and record["results"]["rows"] == rows
    assert prune_scores.render(record) in table


def test_prune_to_target_recalibrates_only_with_batches(plain_path):
    from repvgg_lab.deploy import load_source

    net = load_source(plain_path).plain.eval()
    _, cut, recalibrated = prune_scores.prune_to_target(net, 16, 0.5, "l2", False, None)
    assert cut >= 0.5 and not recalibrated


def test_prune_scores_cli_refuses_a_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_script("prune_scores").main([str(tmp_path / "nope.safetensors")])
    assert exit_.value.code == 2 and "no such file" in capsys.readouterr().err
