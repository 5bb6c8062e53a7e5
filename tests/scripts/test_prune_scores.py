"""scripts/prune_scores.py on a small converted RepVGG: every criterion meets the MAC target."""

import json

from repvgg_lab.models import create_model, reparameterize, save_weights
from repvgg_lab.models.checkpoints import plain_metadata
from repvgg_lab.testing import randomize_bn
from tests.helpers.cli import load_script


def test_prune_scores_reports_every_criterion_at_the_target(tmp_path, capsys):
    net = create_model("repvgg_a0", num_classes=10)
    randomize_bn(net, seed=0)
    plain = reparameterize(net.eval())
    path = tmp_path / "plain.safetensors"
    meta = plain_metadata(
        plain, model_name="repvgg_a0", num_classes=10, in_channels=3, input_size=16
    )
    save_weights(plain, path, meta)
    out = tmp_path / "rows.json"
    args = [str(path), "--targets", "0.3", "--calibration-batches", "2", "--batch-size", "8"]
    assert load_script("prune_scores").main([*args, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["criterion"] for r in rows][0] == "unpruned" and len(rows) == 1 + 4
    for r in rows[1:]:
        assert r["macs_cut"] >= 0.3 and all(0.0 <= a <= 1.0 for a in r["acc"])
        assert r["recalibrated"] == r["criterion"].endswith("+ recalibration")
    table = capsys.readouterr().out
    assert "16 training images" in table
    assert all(f"| {r['criterion']} | {100 * r['macs_cut']:.1f} % |" in table for r in rows)
