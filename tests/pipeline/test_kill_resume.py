"""A training process killed mid-epoch resumes from its last complete checkpoint and finishes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.helpers.cli import REPO

STEPS = 30  # training batches per epoch
EPOCHS = 4
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
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _train(run_dir: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "train.py", *RUN, f"hydra.run.dir={run_dir}", *extra]
    return subprocess.Popen(
        command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _kill_mid_epoch(process: subprocess.Popen, last: Path, timeout: float = 300) -> None:
    """SIGKILL once last.ckpt exists and a later epoch is under way (not at a save)."""
    deadline = time.monotonic() + timeout
    while not last.exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint was written in time"
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the next epoch: each takes seconds
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


def _trained_epochs(run_dir: Path) -> set[int]:
    with open(next(run_dir.rglob("metrics.csv"))) as f:
        return {int(float(r["epoch"])) for r in csv.DictReader(f) if r.get("train/acc")}


def test_sigkill_mid_epoch_then_resume_finishes_with_restored_state(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    last = first / "checkpoints" / "last.ckpt"
    _kill_mid_epoch(_train(first), last)
    assert not (first / "metrics.json").exists(), "the killed run must not have finished"
    # What resume reads is a complete checkpoint of a finished epoch, never a partial write.
    saved = torch.load(last, weights_only=True)
    done = saved["epoch"]
    assert done < EPOCHS - 1 and saved["global_step"] == STEPS * (done + 1)
    assert not [p for p in last.parent.iterdir() if p.name != "last.ckpt"], "stray partial files"

    resumed = _train(second, f"ckpt_path={last}")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert _trained_epochs(second) == set(range(done + 1, EPOCHS))
    final = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["epoch"] == EPOCHS - 1 and final["global_step"] == STEPS * EPOCHS
    # The per-step schedule continued from the checkpoint instead of starting over...
    assert final["lr_schedulers"][0]["last_epoch"] == STEPS * EPOCHS
    # ... and so did SGD's momentum (its buffers exist for every parameter group's params).
    state = final["optimizer_states"][0]["state"]
    assert state and all(s["momentum_buffer"] is not None for s in state.values())
    metrics = json.loads((second / "metrics.json").read_text())
    for key in ("val/acc", "test/acc", "deploy/test/acc", "drift/vs_fp64/deploy_rel_max"):
        assert key in metrics, key
    assert metrics["drift/top1_agree"] == 1.0
