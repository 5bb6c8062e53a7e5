"""A run killed mid-epoch and resumed from its last checkpoint ends exactly where an
uninterrupted run of the same config and seed ends: weights, momentum, schedule and EMA."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import REPO

STEPS = 12  # training batches per epoch
EPOCHS = 3
RUN = [
    "data.img_size=16",
    "data.batch_size=16",
    "data.augment=true",  # random shifts: the augmentation RNG must resume too
    f"trainer.max_epochs={EPOCHS}",
    f"+trainer.limit_train_batches={STEPS}",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "ema.decay=0.9",
    "callbacks.progress_bar=null",
    "callbacks.model_checkpoint=null",
    "logger=csv",
]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _train(run_dir: Path, *extra: str) -> subprocess.Popen:
    marker = [
        "+callbacks.marker._target_=tests.helpers.step_marker.StepMarker",
        f"+callbacks.marker.path={run_dir}.step",
        "+callbacks.marker.delay=0.05",  # room to land the kill between two steps
    ]
    command = [sys.executable, "train.py", *RUN, *marker, f"hydra.run.dir={run_dir}", *extra]
    return subprocess.Popen(
        command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _step(run_dir: Path) -> int:
    path = Path(f"{run_dir}.step")
    return int(path.read_text()) if path.exists() else -1


def _kill_between(
    process: subprocess.Popen, run_dir: Path, low: int, high: int, timeout: float = 300
) -> int:
    """SIGKILL once the process reports a step in [low, high]; returns the last step it
    reported. (The marker writes before the checkpoint callback saves, which runs last.)"""
    deadline = time.monotonic() + timeout
    while not low <= _step(run_dir) <= high:
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"the run never reached steps {low}-{high}"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    return _step(run_dir)


def _finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]


def _assert_same(a: object, b: object, where: str) -> None:
    """Bitwise equality of nested checkpoint state (tensors, numbers, containers)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# (extra overrides, kill window, global step of the checkpoint that resume reads)
MODES = {
    # last.ckpt at epoch ends: the resumed run redoes the killed epoch from its first batch.
    "epoch_end": ((), (STEPS + 3, 2 * STEPS - 3), STEPS),
    # last.ckpt every 5 steps too: it resumes at step 15, the fourth batch of epoch 1.
    "mid_epoch": (("checkpoint.every_n_steps=5",), (16, 19), 15),
}


@pytest.mark.parametrize("mode", MODES)
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(
    tmp_path: Path, mode: str
) -> None:
    extra, (low, high), resume_step = MODES[mode]
    reference, first, second = tmp_path / "reference", tmp_path / "first", tmp_path / "second"
    uninterrupted = _train(reference, *extra)  # beside the killed run: one thread each
    killed_at = _kill_between(_train(first, *extra), first, low, high)
    _finish(uninterrupted)
    assert not (first / "metrics.json").exists(), "the killed run must not have finished"
    last = first / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    # The kill landed after steps the checkpoint does not hold: resume must redo them.
    assert saved["epoch"] == (1 if mode == "mid_epoch" else 0)
    assert saved["global_step"] == resume_step < killed_at < 2 * STEPS
    assert not [p for p in last.parent.iterdir() if p.name != "last.ckpt"], "stray partial files"

    _finish(_train(second, f"ckpt_path={last}"))
    final = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)
    expected = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == expected["global_step"] == STEPS * EPOCHS
    # Bitwise: one thread, the same kernels, the same data order, crops and in-step randomness.
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "ema_state_dict"):
        _assert_same(final[key], expected[key], key)
    assert final["ema_updates"] == expected["ema_updates"] == STEPS * EPOCHS
    momentum = final["optimizer_states"][0]["state"]
    assert momentum and all(s["momentum_buffer"].abs().sum() > 0 for s in momentum.values())
    metrics, expected = (json.loads((d / "metrics.json").read_text()) for d in (second, reference))
    assert 0 <= metrics.pop("perf/data_wait") < 1 and metrics.pop("perf/images_per_s") > 0
    assert {k: v for k, v in expected.items() if not k.startswith("perf/")} == metrics
    # One line per epoch in train.log (here a file: the console is no terminal either).
    lines = [s for s in (second / "train.log").read_text().splitlines() if "] - epoch " in s]
    assert [s.split("] - epoch ")[1].split()[0] for s in lines] == ["2/3", "3/3"]
