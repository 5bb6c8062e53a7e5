"""The EMA callback checked against its arithmetic: the averaged weights equal a hand-computed
recurrence over the raw weights a real Trainer produced, the checkpoint carries the average and
its update count into a resumed run, and `ema/<split>/acc` is the averaged net's accuracy."""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from repvgg_lab.data import DigitsDataModule
from repvgg_lab.lit import EMA, ClassifierModule

State = dict[str, Tensor]
BATCH = 16


def snapshot(net: nn.Module) -> State:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


class RawWeights(pl.Callback):
    """Records the trained net's weights at fit start and after every optimizer step."""

    def __init__(self) -> None:
        self.start: State = {}
        self.steps: list[State] = []
        self._step = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = snapshot(pl_module.net)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._step = trainer.global_step  # restored by now when resuming

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_) -> None:
        if trainer.global_step != self._step:  # an optimizer step happened in this batch
            self._step = trainer.global_step
            self.steps.append(snapshot(pl_module.net))


def module(seed: int = 0, lr: float = 0.5) -> ClassifierModule:
    """A conv + BN + linear classifier (float parameters, float and integer BN buffers)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 10),
    )
    return ClassifierModule(
        "small_cnn",
        num_classes=10,
        input_size=8,
        net=net,
        optimizer=partial(torch.optim.SGD, lr=lr),
        lr_batch_reference=None,
    )


def fit(lit: ClassifierModule, callbacks: list[pl.Callback], **trainer_kwargs) -> pl.Trainer:
    ckpt_path = trainer_kwargs.pop("ckpt_path", None)
    kwargs = {"limit_val_batches": 0, **trainer_kwargs}
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **kwargs,
    )
    dm = DigitsDataModule(img_size=8, batch_size=BATCH, augment=False)
    trainer.fit(lit, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def recurrence(start: State, steps: list[State], decays: list[float]) -> State:
    """ema_t = d_t * ema_(t-1) + (1 - d_t) * w_t in float64; integer buffers take w_t."""
    avg = {k: v.double() if v.is_floating_point() else v.clone() for k, v in start.items()}
    for weights, d in zip(steps, decays, strict=True):
        for k, w in weights.items():
            avg[k] = d * avg[k] + (1 - d) * w.double() if w.is_floating_point() else w.clone()
    return avg


def assert_state(actual: State, expected: State) -> None:
    assert actual.keys() == expected.keys()
    for k, v in expected.items():
        if v.is_floating_point():
            torch.testing.assert_close(actual[k].double(), v.double(), rtol=1e-5, atol=1e-6, msg=k)
        else:
            assert torch.equal(actual[k], v), k


@pytest.mark.parametrize(
    ("decay", "warmup", "decays"),
    [
        # d_t = min(decay, (1 + t) / (10 + t)): the ramp 1/10, 2/11, then capped at 0.2.
        (0.2, True, [0.1, 2 / 11, 0.2, 0.2]),
        (0.5, False, [0.5, 0.5, 0.5, 0.5]),
    ],
)
def test_the_average_follows_the_recurrence(decay, warmup, decays) -> None:
    raw, ema = RawWeights(), EMA(decay=decay, warmup=warmup)
    lit = module()
    fit(lit, [raw, ema], max_steps=len(decays))
    assert ema.updates == len(raw.steps) == len(decays)
    assert not torch.equal(raw.steps[-1]["0.weight"], raw.start["0.weight"])  # it trained
    assert_state(snapshot(ema.net), recurrence(raw.start, raw.steps, decays))
    # The integer buffer is the trained net's, and the average is not the trained net.
    assert int(ema.net.state_dict()["1.num_batches_tracked"]) == len(decays)
    assert not torch.allclose(ema.net.state_dict()["0.weight"], lit.net.state_dict()["0.weight"])


def test_one_update_per_optimizer_step_under_gradient_accumulation() -> None:
    raw, ema = RawWeights(), EMA(decay=0.5, warmup=False)
    fit(module(), [raw, ema], max_steps=3, accumulate_grad_batches=2)
    assert ema.updates == len(raw.steps) == 3
    assert_state(snapshot(ema.net), recurrence(raw.start, raw.steps, [0.5] * 3))


def saved_run(tmp_path: Path, steps: int = 3) -> tuple[EMA, Path]:
    ema = EMA(decay=0.5, warmup=True)
    trainer = fit(module(), [ema], max_steps=steps)
    path = tmp_path / "ema.ckpt"
    trainer.save_checkpoint(path)
    return ema, path


def test_the_checkpoint_carries_the_average_and_its_count(tmp_path) -> None:
    saved, path = saved_run(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["ema_updates"] == 3
    assert_state(ckpt["ema_state_dict"], snapshot(saved.net))
    # Into a callback whose net exists already (it trained elsewhere, 1 update).
    other = EMA(decay=0.5, warmup=True)
    lit = module(seed=1)
    fit(lit, [other], max_steps=1)
    other.on_load_checkpoint(None, lit, ckpt)
    assert other.updates == 3
    assert_state(snapshot(other.net), snapshot(saved.net))
    # Into a fresh callback before fit starts: held until the net exists, then loaded.
    fresh = EMA(decay=0.5, warmup=True)
    fresh.on_load_checkpoint(None, lit, ckpt)
    assert fresh.net is None and fresh.updates == 3
    fresh.on_fit_start(None, lit)
    assert_state(snapshot(fresh.net), snapshot(saved.net))
    assert not torch.equal(fresh.net.state_dict()["0.weight"], lit.net.state_dict()["0.weight"])


@pytest.mark.parametrize("reuse", [False, True], ids=["fresh callback", "callback with a net"])
def test_a_resumed_run_continues_the_average_from_the_restored_count(tmp_path, reuse) -> None:
    saved, path = saved_run(tmp_path, steps=3)
    average = snapshot(saved.net)
    if reuse:  # the same callback, its net already built, goes into the resumed run
        ema = saved
        with torch.no_grad():
            for v in ema.net.state_dict().values():
                v.zero_()  # so only the checkpoint can bring the average back
    else:
        ema = EMA(decay=0.5, warmup=True)
    raw = RawWeights()
    fit(module(seed=1), [raw, ema], max_steps=5, ckpt_path=path)
    assert len(raw.steps) == 2 and ema.updates == 5
    # Steps t = 3, 4 of the ramp: min(0.5, 4/13) and min(0.5, 5/14).
    assert_state(snapshot(ema.net), recurrence(average, raw.steps, [4 / 13, 5 / 14]))


def accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy recomputed here, one forward pass over all of `x`."""
    with torch.no_grad():
        return float((net.eval()(x).argmax(dim=1) == y).double().mean())


def test_ema_accuracy_is_the_averaged_nets_on_the_same_images() -> None:
    # A slow average stays near the start while the raw net learns: they predict differently.
    ema = EMA(decay=0.95, warmup=False)
    lit = module(lr=1.0)
    trainer = fit(lit, [ema], max_epochs=1, limit_train_batches=12, limit_val_batches=3)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    dm = DigitsDataModule(img_size=8, batch_size=BATCH, augment=False)
    x, y = dm.fixed_batch("val", None)
    x, y = x[: 3 * BATCH], y[: 3 * BATCH]  # the 3 batches validation ran on
    average, trained = copy.deepcopy(ema.net), copy.deepcopy(lit.net)
    assert accuracy(average, x, y) != accuracy(trained, x, y)
    assert logged["ema/val/acc"] == pytest.approx(accuracy(average, x, y))
    assert logged["val/acc"] == pytest.approx(accuracy(trained, x, y))
    tested = trainer.test(lit, datamodule=dm, verbose=False)[0]
    x, y = dm.fixed_batch("test", None)
    assert tested["ema/test/acc"] == pytest.approx(accuracy(average, x, y))
    assert tested["test/acc"] == pytest.approx(accuracy(trained, x, y))
