"""The prune-scores study on a small converted RepVGG: every criterion meets the MAC target, the
results record renders its doc block, and the command line keeps its options and outputs."""

import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from repvgg_lab.data import DigitsDataModule
from repvgg_lab.deploy import load_source
from repvgg_lab.models import reparameterize, save_weights
from repvgg_lab.models.checkpoints import plain_metadata
from repvgg_lab.results import read_results
from repvgg_lab.studies import prune_scores
from repvgg_lab.testing import trained_like
from tests.helpers.cli import load_script


def fit_head(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Ridge regression of the classifier on the net's pooled features: a random net is at
    chance under every criterion, this one (~60% on digits) loses a different share to each."""
    features: list[torch.Tensor] = []
    hook = net.head.fc.register_forward_hook(lambda m, args, out: features.append(args[0]))
    with torch.no_grad():
        net(images)
    hook.remove()
    a = torch.cat([features[0], torch.ones(len(images), 1)], dim=1).double()
    ridge = 0.1 * a.pow(2).sum() / len(a) * torch.eye(a.shape[1], dtype=a.dtype)
    solution = torch.linalg.solve(a.T @ a + ridge, a.T @ F.one_hot(labels, 10).double())
    with torch.no_grad():
        net.head.fc.weight.copy_(solution[:-1].T)
        net.head.fc.bias.copy_(solution[-1])


@pytest.fixture(scope="module")
def plain_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    plain = reparameterize(trained_like("repvgg_a0", 0, num_classes=10)).eval()
    fit_head(plain, *DigitsDataModule(img_size=16).fixed_batch("train", 512))
    path = tmp_path_factory.mktemp("plain") / "plain.safetensors"
    meta = plain_metadata(
        plain, model_name="repvgg_a0", num_classes=10, in_channels=3, input_size=16
    )
    save_weights(plain, path, meta)
    return path


# One row of each pair (l2 / l2_next, without / with recalibration), all with different
# accuracies: a swapped or misplaced row shows, at half the pruning time of checking all four
# (the MAC search costs ~1.5 s a net).
CHECKED = ("unpruned", "l2 + recalibration", "l2_next, normalized")


def recomputed_accuracies(
    plain_path: Path, target: float, calibration_images: int
) -> dict[str, list[float]]:
    """[test, val] accuracy of the CHECKED nets, from whole-split forward passes."""
    net = load_source(plain_path).plain.eval()
    dm = DigitsDataModule(img_size=16)
    splits = [dm.fixed_batch(split, None) for split in ("test", "val")]
    calibration = list(dm.fixed_batch("train", calibration_images)[0].split(8))

    def accuracy(model: torch.nn.Module) -> list[float]:
        with torch.no_grad():
            model.eval()
            return [float((model(x).argmax(dim=1) == y).double().mean()) for x, y in splits]

    nets = {"unpruned": net}
    for label, score, normalize, calibrated in prune_scores.CRITERIA:
        if label not in CHECKED:
            continue
        batches = calibration if calibrated else None
        nets[label] = prune_scores.prune_to_target(net, 16, target, score, normalize, batches)[0]
    return {label: accuracy(model) for label, model in nets.items()}


def test_prune_scores_reports_every_criterion_at_the_target(plain_path, tmp_path, capsys):
    out, results = tmp_path / "rows.json", tmp_path / "prune_scores.json"
    args = [str(plain_path), "--targets", "0.3", "--calibration-batches", "2", "--batch-size", "8"]
    main = load_script("prune_scores").main
    assert main([*args, "--out", str(out), "--results", str(results)]) == 0
    rows = json.loads(out.read_text())
    assert [r["criterion"] for r in rows][0] == "unpruned" and len(rows) == 1 + 4
    expected = recomputed_accuracies(plain_path, target=0.3, calibration_images=16)
    assert len({tuple(acc) for acc in expected.values()}) == len(CHECKED)  # rows tell apart
    checked = [r for r in rows if r["criterion"] in CHECKED]
    assert len(checked) == len(CHECKED)
    for r in checked:
        assert r["acc"] == pytest.approx(expected[r["criterion"]]), r["criterion"]
    for r in rows[1:]:
        assert r["macs_cut"] >= 0.3
        assert r["recalibrated"] == r["criterion"].endswith("+ recalibration")
    table = capsys.readouterr().out
    assert "16 training images" in table
    assert all(f"| {r['criterion']} | {100 * r['macs_cut']:.1f} |" in table for r in rows)
    record = read_results(results)
    assert record["command"].startswith("python") and record["results"]["rows"] == rows
    assert prune_scores.render(record) in table


def test_prune_to_target_recalibrates_only_with_batches(plain_path):
    net = load_source(plain_path).plain.eval()
    _, cut, recalibrated = prune_scores.prune_to_target(net, 16, 0.5, "l2", False, None)
    assert cut >= 0.5 and not recalibrated


def test_prune_scores_cli_refuses_a_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_script("prune_scores").main([str(tmp_path / "nope.safetensors")])
    assert exit_.value.code == 2 and "no such file" in capsys.readouterr().err
