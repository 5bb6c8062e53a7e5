"""Sweeps and runs on a cluster: SLURM through Hydra's submitit launcher (tested locally)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.helpers.cli import REPO, run_script

SMALL = [
    "trainer.max_epochs=1",
    "data.img_size=16",
    "+trainer.limit_train_batches=4",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "callbacks.progress_bar=null",
    "logger=none",
]


def test_slurm_launcher_config_has_the_keys_users_override() -> None:
    overrides = [
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.gpus_per_node=8",
        "hydra.launcher.tasks_per_node=8",
        "hydra.launcher.nodes=2",
        "hydra.launcher.timeout_min=600",
        "hydra.launcher.mem_gb=256",
    ]
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 8, 8)
    assert (launcher.nodes, launcher.timeout_min, launcher.mem_gb) == (2, 600, 256)


@pytest.mark.slow
def test_submitit_local_multirun_completes_every_job(tmp_path: Path) -> None:
    result = run_script(
        "train.py",
        "-m",
        "hydra/launcher=submitit_local",
        "seed=1,2",
        *SMALL,
        f"hydra.sweep.dir={tmp_path}",
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.parent.name for p in tmp_path.glob("*/metrics.json"))
    assert runs == ["0", "1"]
    seeds = [json.loads((tmp_path / r / "metrics.json").read_text()) for r in runs]
    assert all(m["drift/top1_agree"] == 1.0 and "deploy/test/acc" in m for m in seeds)
    assert os.path.isdir(tmp_path / ".submitit")  # the jobs went through submitit
