"""The gamma-drift study: init schemes on every branch BN, TF32 as a drift mode, the sweep config
run as a real multirun, and the sweep report (repvgg_lab.studies.gamma_sweep / gamma_plots,
scripts/drift_report.py) on real and synthetic sweeps."""

import csv
import json
import os
import statistics
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from torch.nn.modules.batchnorm import _BatchNorm

from repvgg_lab import create_model
from repvgg_lab.lit.callbacks import Reparameterize
from repvgg_lab.results import read_results
from repvgg_lab.studies import gamma_plots, gamma_sweep
from repvgg_lab.utils import tf32
from tests.helpers.cli import load_script, run_script
from tests.helpers.contract import DRIFT_METRICS
from tests.helpers.wandb_records import artifacts, records, summary

ROOT = Path(__file__).resolve().parents[2]
DESIGN_NAMES = [name.removeprefix("drift/") for name in DRIFT_METRICS]

drift_report = load_script("drift_report")


def _compose(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        return compose("train", overrides=["output_dir=/tmp/unused", *overrides])


def _branch_bns(net: torch.nn.Module) -> dict[str, list[_BatchNorm]]:
    """The BNs of every RepVGG block, by branch."""
    found = {"conv_kxk": [], "conv_1x1": [], "identity": []}
    for name, module in net.named_modules():
        leaf = name.split(".")[-1]
        if isinstance(module, _BatchNorm):
            branch = "identity" if leaf == "identity" else name.split(".")[-2]
            found[branch].append(module)
    return found


# --- init config group ---------------------------------------------------------------------


def test_bn_gamma_config_sets_every_branch_bn_identity_included():
    cfg = _compose("model=repvgg_a0", "init=bn_gamma", "init.gamma=0.25", "init.beta=-0.5")
    net = instantiate(cfg.init)(create_model("repvgg_a0", num_classes=10))
    bns = _branch_bns(net)
    # A0 has 22 blocks with 3x3 and 1x1 branches; 17 of them (stride 1, same width) an identity.
    assert [len(bns[k]) for k in ("conv_kxk", "conv_1x1", "identity")] == [22, 22, 17]
    for branch, modules in bns.items():
        for bn in modules:
            assert torch.all(bn.weight == 0.25) and torch.all(bn.bias == -0.5), branch
            # Only the affine parameters are an init choice; running statistics stay fresh.
            assert torch.all(bn.running_mean == 0) and torch.all(bn.running_var == 1), branch


def test_timm_config_draws_every_branch_bn_from_timms_distribution():
    cfg = _compose("init=timm", "seed=3")
    net = instantiate(cfg.init)(create_model("repvgg_b0", num_classes=10))
    for branch, modules in _branch_bns(net).items():
        weights = torch.cat([bn.weight.detach() for bn in modules])
        biases = torch.cat([bn.bias.detach() for bn in modules])
        assert weights.numel() > 1000, branch
        # N(0.1, 0.1) and N(0, 0.1): sample moments within a few standard errors.
        assert abs(float(weights.mean()) - 0.1) < 0.01, branch
        assert abs(float(weights.std()) - 0.1) < 0.01, branch
        assert abs(float(biases.mean())) < 0.01 and abs(float(biases.std()) - 0.1) < 0.01, branch
    again = instantiate(_compose("init=timm", "seed=3").init)(create_model("repvgg_b0"))
    assert torch.equal(again.stem.conv_kxk.conv.weight, net.stem.conv_kxk.conv.weight)


def test_default_config_keeps_pytorchs_bn_init():
    net = instantiate(_compose("init=default").init)(create_model("repvgg_a0", num_classes=10))
    for modules in _branch_bns(net).values():
        assert all(torch.all(bn.weight == 1) and torch.all(bn.bias == 0) for bn in modules)


def test_sweep_config_composes_to_a_gamma_by_seed_multirun():
    cfg = _compose("sweep=gamma_drift")
    assert cfg.init._target_.endswith("bn_gamma")
    assert cfg.callbacks.reparameterize.at_init is True
    assert list(cfg.callbacks.reparameterize.drift_dtypes) == ["float32", "bfloat16", "tf32"]
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        full = compose("train", overrides=["sweep=gamma_drift"], return_hydra_config=True)
    params = full.hydra.sweeper.params
    gammas = {float(g) for g in params["init.gamma"].split(",")}
    assert {0.01, 0.1, 1.0, 2.0} <= gammas
    assert len(params["seed"].split(",")) >= 2
    assert str(full.hydra.mode).endswith("MULTIRUN")


# --- TF32 as a drift mode ------------------------------------------------------------------


def test_tf32_context_sets_both_flags_and_restores_them():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with tf32(True):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with tf32(False):
            assert not torch.backends.cuda.matmul.allow_tf32
            assert not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == saved


def test_tf32_cannot_name_the_unprefixed_drift_metrics():
    with pytest.raises(ValueError, match="tf32"):
        Reparameterize(drift_dtypes=["tf32", "float32"])
    with pytest.raises(ValueError, match="unknown dtype 'fp33'"):
        Reparameterize(drift_dtypes=["float32", "fp33"])


@pytest.mark.gpu
def test_tf32_drift_is_measured_on_cuda_and_is_far_above_fp32():
    net = create_model("repvgg_a0", num_classes=10).cuda().eval()
    callback = Reparameterize(drift_dtypes=["float32", "tf32"])
    metrics, _ = callback._drift(net, torch.randn(8, 3, 64, 64, device="cuda"), "")
    # TF32 keeps 10 mantissa bits (eps 2^-10) against fp32's 23.
    assert (
        metrics["drift/tf32/vs_fp64/deploy_rel_max"] > 30 * metrics["drift/vs_fp64/deploy_rel_max"]
    )
    assert metrics["drift/vs_fp64/deploy_rel_max"] < 1e-5


# --- the report script on a synthetic sweep (fast) ------------------------------------------


def _metrics(gamma: float, seed: int) -> dict[str, float]:
    """Plausible metrics; gamma 0.01 has underflowed activations and an exactly-zero drift."""
    out = {}
    for prefix in ("drift", "drift/bfloat16", "drift/init", "drift/init/bfloat16"):
        small = prefix.startswith("drift/init") and gamma < 0.1
        scale = 4e-3 if "bfloat16" in prefix else 2e-7
        out.update(
            {
                f"{prefix}/max_abs": 0.0 if small else scale * (1 + seed),
                f"{prefix}/rel_max": 0.0 if small else scale * (1 + seed),
                f"{prefix}/top1_agree": 1.0,
                f"{prefix}/vs_fp64/train_rel_max": 0.0 if small else scale,
                f"{prefix}/vs_fp64/deploy_rel_max": 0.0 if small else scale * (2 + seed),
                f"{prefix}/underflow_frac": 0.1 if small else 0.0,
            }
        )
    out["val/acc"] = 0.5
    return out


BLOCK_VALUES = {"stem": 1e-7, "stages.0.0": 3e-7, "stages.0.1": 2e-7, "stages.1.0": 6e-7}


def _write_run(folder: Path, gamma: float, seed: int) -> None:
    (folder / ".hydra").mkdir(parents=True)
    config = (
        "seed: {seed}\ninit:\n  _target_: repvgg_lab.models.init.bn_gamma\n"
        "  _partial_: true\n  gamma: {gamma}\n  beta: 0.0\n"
    )
    (folder / ".hydra" / "config.yaml").write_text(config.format(seed=seed, gamma=gamma))
    (folder / "metrics.json").write_text(json.dumps(_metrics(gamma, seed)))
    blocks = {
        prefix: {
            name: {"deploy_rel_max": v * (1 + seed), "train_rel_max": v, "rel_max": v}
            for name, v in BLOCK_VALUES.items()
        }
        for prefix in ("drift", "drift/init", "drift/bfloat16", "drift/init/bfloat16")
    }
    (folder / "drift_blocks.json").write_text(json.dumps(blocks))


@pytest.fixture
def synthetic_sweep(tmp_path: Path) -> Path:
    for i, (gamma, seed) in enumerate([(1, 1), (0.01, 0), (1, 0), (0.01, 1)]):
        _write_run(tmp_path / f"{i}_g{gamma}_s{seed}", gamma, seed)
    # A job that died before writing metrics.json.
    (tmp_path / "9_dead" / ".hydra").mkdir(parents=True)
    return tmp_path


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open() as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def _assert_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"
    with Image.open(path) as image:
        assert image.size[0] > 400 and image.size[1] > 300


def test_report_logs_its_plots_and_table_to_an_offline_wandb_run(synthetic_sweep) -> None:
    assert drift_report.main([str(synthetic_sweep)]) == 0
    (run_dir,) = synthetic_sweep.glob("wandb/offline-run-*")
    logged = {kind: files for kind, files in artifacts(run_dir).values()}
    assert logged["study"] == ["drift_table.csv"]
    images = sorted(p.name.split("_")[0] for p in run_dir.glob("files/media/images/**/*.png"))
    assert len(images) == 2  # drift_vs_gamma.png and drift_blocks.png
    assert drift_report.main([str(synthetic_sweep), "--no-wandb"]) == 0
    assert len(list(synthetic_sweep.glob("wandb/offline-run-*"))) == 1


def test_report_on_synthetic_runs_writes_table_plots_and_flags(synthetic_sweep, capsys, caplog):
    assert drift_report.main([str(synthetic_sweep)]) == 0
    header, rows = _read_csv(synthetic_sweep / "drift_table.csv")
    assert header[:6] == ["run", "init", "gamma", "seed", "underflow", "zero_drift"]
    for prefix in ("drift", "drift/init", "drift/bfloat16", "drift/init/bfloat16"):
        for name in DESIGN_NAMES:
            assert f"{prefix}/{name}" in header
    assert "val/acc" not in header
    # One row per finished run, ordered by gamma then seed; the dead job is reported, not a row.
    assert [(float(r["gamma"]), int(r["seed"])) for r in rows] == [
        (0.01, 0),
        (0.01, 1),
        (1, 0),
        (1, 1),
    ]
    assert all(r["init"] == "bn_gamma" for r in rows)
    for r in rows:
        expected = _metrics(float(r["gamma"]), int(r["seed"]))
        assert float(r["drift/vs_fp64/deploy_rel_max"]) == expected["drift/vs_fp64/deploy_rel_max"]
        blocks = [v * (1 + int(r["seed"])) for v in BLOCK_VALUES.values()]
        assert float(r["drift/blocks/deploy_rel_max_median"]) == pytest.approx(
            statistics.median(blocks)
        )
        assert float(r["drift/init/blocks/deploy_rel_max_max"]) == pytest.approx(max(blocks))
    flagged = {(float(r["gamma"]), int(r["seed"])): (r["underflow"], r["zero_drift"]) for r in rows}
    both = "drift/init;drift/init/bfloat16"
    assert flagged == {
        (0.01, 0): (both, both),
        (0.01, 1): (both, both),
        (1, 0): ("", ""),
        (1, 1): ("", ""),
    }
    for name in ("drift_vs_gamma.png", "drift_blocks.png"):
        _assert_png(synthetic_sweep / name)
    out, err = capsys.readouterr()
    assert "9_dead" in caplog.text and "no metrics.json" in caplog.text
    assert err.count("underflow in drift/init") == 2
    assert "0.01" in out and "drift/init" in out


def test_report_plot_rings_the_underflowed_points(synthetic_sweep):
    rows, _ = gamma_sweep.collect_runs(synthetic_sweep)
    fig = gamma_plots.figure_vs_gamma(rows)
    ringed = {}
    for ax in fig.axes:
        for artist in ax.collections:
            if artist.get_label() == "underflow (artefact)":
                ringed[ax.get_title()] = {float(x) for x, _ in artist.get_offsets()}
    assert ringed == {"at init": {0.01}}, ringed


def test_report_orders_blocks_in_network_order():
    names = ["stages.1.0", "stem", "stages.0.10", "stages.0.2"]
    ordered = sorted(names, key=gamma_sweep.block_order)
    assert ordered == ["stem", "stages.0.2", "stages.0.10", "stages.1.0"]


def test_report_reads_gamma_and_seed_from_overrides_when_config_lacks_them(tmp_path):
    run = tmp_path / "0"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- init.gamma=0.1\n- seed=7\n")
    (run / "metrics.json").write_text(json.dumps(_metrics(0.1, 7)))
    rows, blocks = gamma_sweep.collect_runs(tmp_path)
    assert (rows[0]["gamma"], rows[0]["seed"]) == (0.1, 7) and blocks == {"0": {}}


def test_report_cli_errors_in_one_line(tmp_path):
    for folder in (tmp_path / "missing", tmp_path):
        result = run_script("scripts/drift_report.py", str(folder))
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and str(folder) in lines[0]


# --- a real two-point sweep, then the report on it -----------------------------------------


def test_real_sweep_then_report(tmp_path: Path):
    """`train.py -m sweep=gamma_drift`, made tiny, then `drift_report.py` on its folder."""
    sweep = tmp_path / "sweep"
    tiny = [
        "init.gamma=0.01,1",
        "seed=0",
        "data.img_size=16",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
        "callbacks.reparameterize.drift_batch_size=8",
        "+callbacks.reparameterize.save=false",
        "callbacks.model_checkpoint=null",
        "callbacks.progress_bar=null",
        f"hydra.sweep.dir={sweep}",
    ]
    result = run_script("train.py", "-m", "sweep=gamma_drift", *tiny, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(runs) == 2, runs
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        # Init and trained drift in fp32 and bf16; TF32 skipped (with a note) on a CPU.
        for prefix in ("drift", "drift/bfloat16", "drift/init", "drift/init/bfloat16"):
            assert all(f"{prefix}/{name}" in metrics for name in DESIGN_NAMES), prefix
        if not torch.cuda.is_available():
            assert not any(k.startswith("drift/tf32") for k in metrics)
            assert "tf32 skipped" in (run / "train.log").read_text()
        # One W&B run per job (the sweep's default logger, offline), named after its point,
        # finished (exit record) and holding the final metrics in its summary.
        (wandb_run,) = run.glob("wandb/offline-run-*")
        recs = records(next(wandb_run.glob("run-*.wandb")))
        (info,) = [r.run for r in recs if r.HasField("run")]
        assert info.display_name == run.name.split("_", 1)[1] and info.run_group == "gamma_drift"
        assert [r.exit.exit_code for r in recs if r.HasField("exit")] == [0]
        wandb_summary = summary(wandb_run)
        assert wandb_summary["drift/init/underflow_frac"] == metrics["drift/init/underflow_frac"]
        blocks = json.loads((run / "drift_blocks.json").read_text())
        assert set(blocks) == {"drift", "drift/bfloat16", "drift/init", "drift/init/bfloat16"}
        assert "stem" in blocks["drift/init"]

    report = run_script("scripts/drift_report.py", str(sweep), timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    header, rows = _read_csv(sweep / "drift_table.csv")
    assert {"gamma", "seed", "underflow", "drift/init/underflow_frac"} <= set(header)
    by_gamma = {float(r["gamma"]): r for r in rows}
    assert sorted(by_gamma) == [0.01, 1.0] and all(r["seed"] == "0" for r in rows)
    # A0 is 22 blocks deep: at gamma 0.01 the untrained net's signal shrinks below fp32's
    # smallest normal number. The report flags it instead of presenting a zero drift.
    low, high = by_gamma[0.01], by_gamma[1.0]
    assert float(low["drift/init/underflow_frac"]) > 0
    assert "drift/init" in low["underflow"].split(";")
    assert float(high["drift/init/underflow_frac"]) == 0 and high["underflow"] == ""
    assert "underflow in drift/init" in report.stderr
    # The per-block numbers stay at the fp32 floor where the end-to-end ones are artefacts.
    assert 0 < float(low["drift/init/blocks/deploy_rel_max_median"]) < 1e-5
    for name in ("drift_vs_gamma.png", "drift_blocks.png"):
        _assert_png(sweep / name)


def test_sweep_results_record_holds_the_summary_table(synthetic_sweep, tmp_path):
    out = tmp_path / "gamma_sweep.json"
    assert drift_report.main([str(synthetic_sweep), "--results", str(out)]) == 0
    record = read_results(out)
    assert record["command"] and record["date"] and record["machine"]["torch"]
    res = record["results"]
    assert res["runs"] == 4 and res["wall_s"] is None  # no multirun.yaml in a synthetic sweep
    header = [name for name, _ in res["summary"]["columns"]]
    assert header[:2] == ["gamma", "seed"] and header[-2:] == ["underflow", "zero drift"]
    assert "init underflow" in header and "tf32 e2e" not in header  # no run has TF32 metrics
    rows = res["summary"]["rows"]
    assert [r[:2] for r in rows] == [[0.01, 0], [0.01, 1], [1, 0], [1, 1]]
    e2e = header.index("fp32 e2e")
    assert [r[e2e] for r in rows] == [
        _metrics(g, s)["drift/vs_fp64/deploy_rel_max"]
        for g, s in ((0.01, 0), (0.01, 1), (1, 0), (1, 1))
    ]
    body = gamma_sweep.render_summary(record)
    assert body.startswith("4 runs on ") and "| 0.01 | 0 | 0.00e+00 |" in body
    assert body.count("drift/init;drift/init/bfloat16") == 4


def test_sweep_wall_time_runs_from_multirun_yaml_to_the_last_metrics(synthetic_sweep):
    start = synthetic_sweep / "multirun.yaml"
    start.write_text("hydra: {}\n")
    os.utime(start, (1000.0, 1000.0))
    for i, path in enumerate(sorted(synthetic_sweep.glob("*/metrics.json"))):
        os.utime(path, (1000.0 + 60 * (i + 1), 1000.0 + 60 * (i + 1)))
    assert gamma_sweep.wall_seconds(synthetic_sweep) == 240.0


def test_report_without_a_folder_or_render_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        drift_report.main([])
    assert exit_.value.code == 2 and "sweep folder" in capsys.readouterr().err
