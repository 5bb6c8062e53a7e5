"""SLURM preemption: SIGUSR1 (sent ahead of a time limit, `--signal=USR1@120`) makes the run save
a checkpoint and requeue its job; the requeued job resumes from it with no ckpt_path given."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.helpers.cli import REPO

STEPS, EPOCHS, JOB = 12, 2, "4242"
RUN = [
    "data.img_size=16",
    "data.batch_size=16",
    f"trainer.max_epochs={EPOCHS}",
    f"+trainer.limit_train_batches={STEPS}",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "callbacks.progress_bar=null",
    "callbacks.model_checkpoint=null",
    "logger=csv",
]
# What a single-task SLURM job step sees (Lightning's SLURM environment reads these).
SLURM = {
    "SLURM_JOB_ID": JOB,
    "SLURM_JOB_NAME": "train",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "node1",
}


def _stand_in_scontrol(bin_dir: Path, record: Path) -> None:
    """`scontrol` that records its arguments, then ends the job as SLURM's requeue does."""
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {record}\nkill -9 $PPID\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def _job(run_dir: Path, bin_dir: Path, marker: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        **SLURM,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    command = [
        sys.executable,
        "train.py",
        *RUN,
        f"hydra.run.dir={run_dir}",
        "+callbacks.marker._target_=tests.helpers.step_marker.StepMarker",
        f"+callbacks.marker.path={marker}",
        "+callbacks.marker.delay=0.05",
    ]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _wait_for_step(process: subprocess.Popen, marker: Path, step: int) -> None:
    deadline = time.monotonic() + 300
    while not (marker.exists() and int(marker.read_text() or -1) >= step):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"step {step} never came"
        time.sleep(0.01)


def test_sigusr1_saves_requeues_and_the_requeued_job_resumes(tmp_path: Path) -> None:
    run_dir, bin_dir, record = tmp_path / "run", tmp_path / "bin", tmp_path / "scontrol.log"
    _stand_in_scontrol(bin_dir, record)
    first = _job(run_dir, bin_dir, tmp_path / "first.step")
    _wait_for_step(first, tmp_path / "first.step", STEPS + 3)  # mid-way through epoch 1
    first.send_signal(signal.SIGUSR1)
    first.wait(timeout=120)
    assert first.returncode == -signal.SIGKILL  # ended by the (stand-in) requeue
    assert record.read_text().split() == ["requeue", JOB]
    (saved,) = run_dir.glob("hpc_ckpt_*.ckpt")
    step = torch.load(saved, weights_only=True)["global_step"]
    assert STEPS + 3 <= step < 2 * STEPS

    # The requeued job: the same command line, no ckpt_path.
    second = _job(run_dir, bin_dir, tmp_path / "second.step")
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    assert "hpc_ckpt_" in err and "Restored all states" in err
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == STEPS * EPOCHS
    assert record.read_text().split() == ["requeue", JOB]  # requeued once, not again


def test_a_batch_job_runs_in_a_folder_named_by_its_job_id(monkeypatch) -> None:
    from repvgg_lab.pipeline.train import slurm_run_name

    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_JOB_NAME"):
        monkeypatch.delenv(key, raising=False)
    assert slurm_run_name("2026-01-01_00-00-00") == "2026-01-01_00-00-00"
    monkeypatch.setenv("SLURM_JOB_ID", JOB)
    assert slurm_run_name("stamp") == f"slurm-{JOB}"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_run_name("stamp") == "slurm-77_3"
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # salloc shell: one folder per run
    assert slurm_run_name("stamp") == "stamp"
