"""The prune study on a fake output: job options, summary over seeds, the acceptance verdict (both
splits), the rendered tables and the command line's --report-only."""

from pathlib import Path

import pytest

from repvgg_lab.results import write_results
from repvgg_lab.studies import prune_study
from tests.helpers.cli import load_script

TARGETS = [0.0, 0.3]


def _metrics(test: float, val: float, macs_after: float = 100.0) -> dict[str, float]:
    return {
        "deploy/test/acc": test,
        "deploy/val/acc": val,
        "prune/test/acc": test - 0.05,
        "prune/val/acc": val - 0.05,
        "finetune/test/acc": test,
        "finetune/val/acc": val,
        "prune/macs_before": 100.0,
        "prune/macs_after": macs_after,
        "prune/params_after": 10.0,
    }


def _runs(pruned_val: float) -> dict:
    """Two seeds: baseline 0.99 / 0.97, gated 0.985 / 0.965, the 30 % target at `pruned_val`."""
    return {
        str(seed): {
            "baseline": _metrics(0.99, 0.97),
            "sparse": _metrics(0.985, 0.965),
            "pruned": {"0.0": _metrics(0.985, 0.965), "0.3": _metrics(0.988, pruned_val, 70.0)},
        }
        for seed in (3, 4)
    }


def test_acceptance_needs_both_splits():
    missed = prune_study.summarize(TARGETS, _runs(0.9626))["acceptance"]
    assert missed["target"] == 0.3 and missed["macs_reduction"] == pytest.approx(0.3)
    assert missed["test_loss_points"] == pytest.approx(0.2) and missed["met_on_test"]
    assert missed["val_loss_points"] == pytest.approx(0.74) and not missed["met_on_val"]
    assert missed["met"] is False
    met = prune_study.summarize(TARGETS, _runs(0.968))["acceptance"]
    assert met["met"] is True
    assert prune_study.summarize([0.0], _runs(0.968))["acceptance"] is None


def _record(pruned_val: float) -> dict:
    lat = {
        size: {
            name: {"median_ms": 2.0, "speedup": s, "macs": 1e6 * s}
            for name, s in (("unpruned", 1.0), ("0.0", 1.0), ("0.3", 1.4))
        }
        for size in ("32", "224")
    }
    lat["params"] = {"unpruned": 7e6, "0.0": 7e6, "0.3": 5e6}
    settings = prune_study.Settings(seeds=[3, 4], targets=TARGETS, latency_sizes=[32, 224])
    results = {
        "settings": vars(settings),
        "elapsed_s": 600.0,
        "test_images": 269,
        "latency": lat,
        "runs": _runs(pruned_val),
        "summary": prune_study.summarize(TARGETS, _runs(pruned_val)),
    }
    return {"date": "2026-01-01 00:00 UTC", "results": results}


def test_renderers_state_a_missed_target_as_missed():
    record = _record(0.9626)
    text = prune_study.render_acceptance(record)
    assert "MISSED.**" in text and "validation -0.74 points (MISSED)" in text
    assert "test -0.20 points (met)" in text
    accuracy = prune_study.render_accuracy(record)
    assert "| MACs −30% + 10 ep FT | 30.0 % | 93.80 ± 0.00 | 98.80 ± 0.00 | -0.20 |" in accuracy
    assert "one image = 0.37 points" in accuracy
    cost = prune_study.render_cost(record)
    assert "| MACs −30% | 1.4 | 1.4 | 5.00 | 2.00 | 2.00 | 1.40 | 1.40 |" in cost
    assert "MET.**" in prune_study.render_acceptance(_record(0.968))


def test_one_seed_resumes_every_target_from_the_gated_checkpoint(monkeypatch, tmp_path):
    calls: list[tuple[str, list[str]]] = []

    def fake_job(out: Path, overrides: list[str], threads: int) -> dict[str, float]:
        calls.append((out.name, overrides))
        return _metrics(0.98, 0.96, 70.0)

    monkeypatch.setattr(prune_study, "run_job", fake_job)
    settings = prune_study.Settings(seeds=[7], targets=TARGETS, out=str(tmp_path))
    out = prune_study.one_seed(settings, 7)
    assert [name for name, _ in calls] == ["baseline", "sparse", "prune0", "prune0.3"]
    assert "trainer.max_epochs=30" in calls[0][1] and "prune.enabled=false" in calls[1][1]
    assert "prune.threshold=0" in calls[2][1] and "prune.macs_reduction=0.3" in calls[3][1]
    last = f"ckpt_path={tmp_path / 'seed7' / 'sparse' / 'checkpoints' / 'last.ckpt'}"
    assert all(last in overrides for _, overrides in calls[2:])
    assert set(out["pruned"]) == {"0.0", "0.3"}


def test_one_seed_refuses_a_resumed_run_that_converted_another_net(monkeypatch, tmp_path):
    accs = iter([0.99, 0.98, 0.97])
    monkeypatch.setattr(prune_study, "run_job", lambda *a, **k: _metrics(next(accs), 0.9))
    settings = prune_study.Settings(seeds=[0], targets=[0.3], out=str(tmp_path))
    with pytest.raises(RuntimeError, match="converted another net"):
        prune_study.one_seed(settings, 0)


def test_report_only_rebuilds_table_md(tmp_path, capsys):
    write_results(tmp_path / "results.json", _record(0.9626)["results"], command="test")
    main = load_script("prune_study").main
    assert main(["--report-only", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "table.md").read_text()
    assert text == capsys.readouterr().out and "MISSED" in text
    assert main(["--report-only", "--out", str(tmp_path / "empty")]) == 2
