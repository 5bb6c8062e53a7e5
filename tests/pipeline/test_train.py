"""End-to-end training jobs: real Lightning, real W&B (offline), real files on disk."""

import csv
import json
import subprocess
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from repvgg_lab.models import create_model, load_pretrained, read_checkpoint, reparameterize
from repvgg_lab.pipeline.train import train
from tests.helpers.cli import run_script
from tests.helpers.contract import DRIFT_METRICS
from tests.helpers.wandb_records import artifacts, summary, table

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "data.img_size=16",
    "data.batch_size=32",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=4",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "callbacks.progress_bar=null",
]


def wandb_summary(output_dir: Path) -> dict:
    runs = list(output_dir.glob("wandb/offline-run-*"))
    assert len(runs) == 1, f"expected one offline W&B run under {output_dir}, found {runs}"
    return summary(runs[0])


def test_train_writes_metrics_wandb_summary_and_plain_weights(
    compose_train, tmp_path: Path
) -> None:
    metrics = train(compose_train(*SMALL))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == pytest.approx(metrics)
    summary = wandb_summary(tmp_path)
    for key in [*DRIFT_METRICS, "val/acc", "test/acc", "deploy/test/acc", "params/deploy"]:
        assert key in on_disk and key in summary, key
        assert summary[key] == pytest.approx(on_disk[key]), key
    assert on_disk["drift/top1_agree"] == 1.0
    assert on_disk["drift/vs_fp64/deploy_rel_max"] < 1e-5
    assert on_disk["params/deploy"] < on_disk["params/train"]
    # Both nets measured on the same images (SMALL limits val and test to 2 batches): the same
    # predictions give the same accuracy.
    assert on_disk["deploy/val/acc"] == pytest.approx(on_disk["val/acc"])
    assert on_disk["deploy/test/acc"] == pytest.approx(on_disk["test/acc"])
    # The plain net saved by the run is the conversion of the saved multi-branch weights.
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt.model_name == "repvgg_a0" and ckpt.hyper_parameters["num_classes"] == 10
    source = load_pretrained(create_model("repvgg_a0", num_classes=10), ckpt.state_dict).eval()
    plain = load_pretrained(
        create_model("repvgg_a0", num_classes=10, deploy=True), tmp_path / "plain.safetensors"
    ).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(plain(x), reparameterize(source)(x))
    blocks = json.loads((tmp_path / "drift_blocks.json").read_text())
    assert "stem" in blocks["drift"] and "stages.3.0" in blocks["drift"]
    # W&B holds the files and the per-block drift, not only the scalars.
    run_dir = next(tmp_path.glob("wandb/offline-run-*"))
    logged = {kind: files for kind, files in artifacts(run_dir).values() if kind != "run_table"}
    assert logged["model"] == ["plain.safetensors"]
    assert sorted(
        f for kind, files in artifacts(run_dir).values() if kind == "metrics" for f in files
    ) == [
        "drift_blocks.json",
        "metrics.json",
    ]
    drift = table(run_dir, "drift/blocks")
    assert drift["columns"][:2] == ["measurement", "block"]
    rows = {(r[0], r[1]): r for r in drift["data"]}
    assert rows[("drift", "stem")][3] == pytest.approx(blocks["drift"]["stem"]["deploy_rel_max"])


def test_the_run_ends_with_its_own_summary(compose_train, tmp_path: Path, capsys) -> None:
    metrics = train(compose_train(*SMALL, "logger=none"))
    lines = capsys.readouterr().out.strip().splitlines()
    summary = lines[lines.index("repvgg_lab train") :]
    text = "\n".join(summary)
    drift = f"drift vs float64: plain {metrics['drift/vs_fp64/deploy_rel_max']:.2e}"
    assert drift in text and "e-0" in drift  # scientific notation, never rounded to 0.0
    assert f"deploy/test/acc {metrics['deploy/test/acc']:.4g}" in text
    assert summary[-1] == f"  next: python deploy.py ckpt={tmp_path}/checkpoints/last.ckpt"


def test_compiled_training_trains_the_same_net_and_converts_it(compose_train, tmp_path) -> None:
    # The eager backend traces through dynamo like inductor but skips code generation (seconds).
    cfg = compose_train(*SMALL, "logger=none", "compile=true", "compile_backend=eager")
    metrics = train(cfg)
    assert metrics["drift/top1_agree"] == 1.0 and metrics["drift/vs_fp64/deploy_rel_max"] < 1e-5
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert not any("_orig_mod" in key for key in ckpt.state_dict)  # the net's own names
    assert ckpt.hyper_parameters["compile_backend"] == "eager"


def test_ema_is_evaluated_checkpointed_and_is_the_converted_net(compose_train, tmp_path) -> None:
    cfg = compose_train(*SMALL, "logger=none", "trainer.max_epochs=2", "ema.decay=0.9")
    metrics = train(cfg)
    for key in ("ema/val/acc", "ema/test/acc", "val/acc", "deploy/test/acc"):
        assert key in metrics, key
    assert metrics["deploy/from_ema"] == 1.0
    raw = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    ema_state, state = raw["ema_state_dict"], raw["state_dict"]
    key = "stem.conv_kxk.conv.weight"
    assert not torch.equal(ema_state[key], state["net." + key])  # two different weight sets
    # The exported plain net is exactly the conversion of the EMA weights.
    ema_net = load_pretrained(create_model("repvgg_a0", num_classes=10), ema_state).eval()
    plain = load_pretrained(
        create_model("repvgg_a0", num_classes=10, deploy=True), tmp_path / "plain.safetensors"
    ).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(plain(x), reparameterize(ema_net)(x))
    best = next((tmp_path / "checkpoints").glob("best-*.ckpt"))
    assert torch.load(best, weights_only=True)["callbacks"]  # chosen by a monitor
    assert any("ema/val/acc" in str(k) for k in torch.load(best, weights_only=True)["callbacks"])


def test_qat_finetuning_writes_an_int8_model_measured_in_onnx_runtime(compose_train, tmp_path):
    overrides = ["finetune.epochs=1", "finetune.qat=true", "finetune.quant.calibration_batches=2"]
    metrics = train(compose_train(*SMALL, "logger=none", *overrides))
    int8 = tmp_path / "model.qat.int8.onnx"
    assert int8.is_file() and (tmp_path / "quant_layers.qat.json").is_file()
    from repvgg_lab.runtime import OnnxRunner

    # Recomputed here from ONNX Runtime's outputs on the whole splits; the agreement is with the
    # plain net before QAT, the one the run saved as plain.safetensors.
    plain = load_pretrained(
        create_model("repvgg_a0", num_classes=10, deploy=True), tmp_path / "plain.safetensors"
    ).eval()
    for split in ("test", "val"):
        images, labels = compose_and_load(compose_train, split)
        predicted = OnnxRunner(int8)(images).argmax(dim=1)
        assert metrics[f"quant/qat/{split}/acc"] == pytest.approx(
            float((predicted == labels).double().mean())
        )
    with torch.no_grad():
        before = plain(images).argmax(dim=1)  # the val split, the last one above
    agree = float((predicted == before).double().mean())
    assert metrics["quant/qat/top1_agree"] == pytest.approx(agree)


def compose_and_load(compose_train, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole `split` of the SMALL runs' digits data (eval transforms)."""
    dm = instantiate(compose_train(*SMALL).data)
    dm.setup()
    return dm.fixed_batch(split, None)


def test_resume_continues_from_the_saved_epoch(compose_train, tmp_path: Path) -> None:
    first = tmp_path / "first"
    # Without the best-by-val/acc checkpoint, last.ckpt must still be written every epoch.
    train(
        compose_train(
            *SMALL, "logger=none", f"output_dir={first}", "callbacks.model_checkpoint=null"
        )
    )
    saved = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 0 and saved["global_step"] == 4
    second = tmp_path / "second"
    train(
        compose_train(
            *SMALL,
            "logger=csv",
            "trainer.max_epochs=2",
            f"output_dir={second}",
            f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}",
        )
    )
    resumed = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["global_step"] == 8
    with open(second / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    trained = {int(float(r["epoch"])) for r in rows if r.get("train/acc")}
    assert trained == {1}, "the resumed run must train epoch 1 only, not epoch 0 again"


def test_missing_resume_checkpoint_is_a_one_line_error(compose_train, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train(compose_train(*SMALL, "logger=none", f"ckpt_path={tmp_path / 'nope.ckpt'}"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.ckpt" in err[0]


def test_sync_batchnorm_on_cpu_is_a_one_line_error_not_a_silent_switch(
    compose_train, capsys
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train(compose_train(*SMALL, "logger=none", "trainer=ddp", "trainer.accelerator=cpu"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trainer.sync_batchnorm=false" in err[0]


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_script("train.py", *args, timeout=timeout)


def test_cli_b2g4_on_an_imagenet_folder(imagenet_root: Path, tmp_path: Path) -> None:
    result = run_cli(
        "model=repvgg_b2g4",
        "data=imagenet",
        f"data.root={imagenet_root}",
        "data.img_size=32",
        "data.batch_size=4",
        "data.num_workers=0",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
        *SMALL[2:],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["drift/top1_agree"] == 1.0
    assert metrics["params/deploy"] < metrics["params/train"]


def test_cifar10_job_in_process(compose_train, cifar10_root: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        "data=cifar10",
        f"data.root={cifar10_root}",
        "data.batch_size=8",
        "data.num_workers=0",
        "+data.val_fraction=0.25",
        "logger=none",
        *SMALL[2:],
    )
    metrics = train(cfg)
    assert metrics["drift/top1_agree"] == 1.0
    # The saved plain net's accuracy on the whole test split, recomputed here.
    plain = load_pretrained(
        create_model("repvgg_a0", num_classes=10, deploy=True), tmp_path / "plain.safetensors"
    ).eval()
    dm = instantiate(cfg.data)
    dm.setup()
    images, labels = dm.fixed_batch("test", None)
    with torch.no_grad():
        correct = plain(images).argmax(dim=1) == labels
    assert metrics["deploy/test/acc"] == pytest.approx(float(correct.double().mean()))


def test_bad_data_root_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_cli(
        "data=imagenet",
        f"data.root={tmp_path / 'missing'}",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing" in lines[0] and "Traceback" not in result.stderr


@pytest.mark.slow
def test_default_job_reaches_the_acceptance_numbers(tmp_path: Path) -> None:
    """`python train.py` as a user types it (only the run folder is redirected)."""
    result = run_cli(f"hydra.run.dir={tmp_path}", timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["val/acc"] >= 0.95
    assert metrics["drift/top1_agree"] >= 0.999
    assert metrics["drift/vs_fp64/deploy_rel_max"] <= 1e-5
    assert abs(metrics["deploy/test/acc"] - metrics["test/acc"]) <= 1e-3
    assert all(k in wandb_summary(tmp_path) for k in DRIFT_METRICS)


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path: Path) -> None:
    result = run_cli(
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.sync_batchnorm=false",
        "logger=none",
        f"hydra.run.dir={tmp_path}",
        *SMALL,
        "finetune.epochs=1",
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # Fine-tuning after DDP training runs on rank 0 alone and does not wait for the others.
    assert "finetune/test/acc" in metrics and "finetune/train/loss" in metrics
    assert metrics["drift/top1_agree"] == 1.0
    assert metrics["drift/vs_fp64/deploy_rel_max"] < 1e-5
