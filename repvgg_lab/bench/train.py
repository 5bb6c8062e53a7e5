"""Training-loop overhead: the project's Lightning loop (ClassifierModule) against a bare PyTorch
loop over the same model, data, optimizer and steps, on the CPU."""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from repvgg_lab.bench.keys import train_key, train_window
from repvgg_lab.bench.result import Run
from repvgg_lab.bench.settings import Settings


def _digits(s: Settings) -> Any:
    """The digits datamodule, its tensors built in memory once."""
    from repvgg_lab.data import DigitsDataModule

    dm = DigitsDataModule(img_size=s.train_size, batch_size=s.train_batch, augment=True)
    dm.setup("fit")
    return dm


def _module_factory(s: Settings, tiny: bool = False) -> Callable[[], Any]:
    """Identically seeded ClassifierModules of `train_model` (or of a one-layer net, whose step
    costs next to nothing, so the Lightning-minus-bare difference is the loop's own cost)."""
    from repvgg_lab.lit.module import ClassifierModule

    def module() -> Any:
        """A fresh module, seeded the same way every time."""
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(3 * s.train_size**2, 10)) if tiny else None
        # No batch-size LR scaling and no scheduler: configure_optimizers needs no Trainer, so
        # the bare loop gets the very optimizer (SGD, param groups, lr, wd) Lightning gets.
        return ClassifierModule(
            s.train_model, input_size=s.train_size, lr_batch_reference=None, net=net
        )

    return module


def bare_loop(module: Any, loader: Any, steps: int, warm: int) -> tuple[float, float]:
    """Manual forward/backward/step; (seconds for steps warm+1..steps, seconds incl. setup)."""
    start_all = time.perf_counter()
    net = module.net.train()
    optimizer = module.configure_optimizers()
    done, start = 0, start_all
    while done < steps:
        for x, y in loader:
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == warm:
                start = time.perf_counter()
            if done == steps:
                break
    end = time.perf_counter()
    return end - start, end - start_all


def lightning_loop(module: Any, dm: Any, steps: int, warm: int) -> tuple[float, float]:
    """Trainer.fit of the project's ClassifierModule; same span as `bare_loop`."""
    import pytorch_lightning as pl

    class Clock(pl.Callback):
        """Times the steps after the warm-up from inside Lightning's loop."""

        start = end = 0.0

        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            """Note the time at the end of the warm-up and of every step."""
            # global_step counts optimizer steps done, like `done` in bare_loop.
            if trainer.global_step == warm:
                self.start = time.perf_counter()
            self.end = time.perf_counter()

    clock = Clock()
    start_all = time.perf_counter()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[clock],
    )
    trainer.fit(module, datamodule=dm)
    end_all = time.perf_counter()
    if trainer.global_step != steps:
        raise RuntimeError(f"Lightning ran {trainer.global_step} steps, expected {steps}")
    return clock.end - (clock.start if warm else start_all), end_all - start_all


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's info lines and hints (GPU available, few workers...) are noise here."""
    names = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def compare_loops(
    dm: Any, make_module: Callable[[], Any], steps: int, warm: int, reps: int
) -> dict[str, dict[str, list[float]]]:
    """Alternating repetitions of both loops: per loop, the seconds of the timed steps
    (`steady`) and of the whole run including setup (`total`)."""
    if not 0 <= warm < steps:
        raise ValueError(f"need 0 <= warm-up steps ({warm}) < steps ({steps})")
    loops = {
        "bare": lambda: bare_loop(make_module(), dm.train_dataloader(), steps, warm),
        "lightning": lambda: lightning_loop(make_module(), dm, steps, warm),
    }
    out: dict[str, dict[str, list[float]]] = {
        "steady": {"bare": [], "lightning": []},
        "total": {"bare": [], "lightning": []},
    }
    with _quiet_lightning():
        for rep in range(reps):
            for kind in ("bare", "lightning") if rep % 2 == 0 else ("lightning", "bare"):
                steady_s, total_s = loops[kind]()
                out["steady"][kind].append(steady_s)
                out["total"][kind].append(total_s)
    return out


def _paired(times: dict[str, list[float]], fn: Callable[[float, float], float]) -> float:
    """Median over repetitions of fn(lightning, bare)."""
    return statistics.median(
        fn(li, b) for li, b in zip(times["lightning"], times["bare"], strict=True)
    )


def _step_ms(r: dict[str, dict[str, list[float]]], loop: str, timed: int) -> float:
    """Median milliseconds per timed step of `loop`."""
    return statistics.median(r["steady"][loop]) / timed * 1e3


def bench_train_section(s: Settings, run: Run) -> None:
    """Lightning vs bare loop on the same model, data, optimizer and steps.

    The headline excludes one-time setup from both: it times the steps after `train_warm_steps`
    (data loading, forward, backward, optimizer step and, for Lightning, its hooks, logging and
    metrics). Setup (Trainer construction, fit start-up/tear-down) is reported separately. The
    same comparison on a one-layer net gives Lightning's fixed cost per step in milliseconds,
    which predicts the overhead ratio of any model: 1 + fixed / bare step.
    """
    dm, m = _digits(s), run.metrics
    timed = s.train_steps - s.train_warm_steps
    with run.window(train_window()):
        r = compare_loops(dm, _module_factory(s), s.train_steps, s.train_warm_steps, s.train_reps)
    for loop in ("bare", "lightning"):
        m[train_key(f"{loop}_step_ms")] = _step_ms(r, loop, timed)
    m[train_key("lightning_overhead")] = _paired(r["steady"], lambda li, b: li / b)
    m[train_key("lightning_overhead_with_setup")] = _paired(r["total"], lambda li, b: li / b)
    for loop in ("bare", "lightning"):
        m[train_key(f"{loop}_total_s")] = statistics.median(r["total"][loop])
    run.details[train_window()] = r

    tiny_timed = s.train_tiny_steps - s.train_warm_steps
    tiny = _module_factory(s, tiny=True)
    with run.window(train_window(tiny=True)):
        r = compare_loops(dm, tiny, s.train_tiny_steps, s.train_warm_steps, s.train_reps)
    for loop in ("bare", "lightning"):
        m[train_key(f"{loop}_step_ms", tiny=True)] = _step_ms(r, loop, tiny_timed)
    fixed_ms = _paired(r["steady"], lambda li, b: (li - b) / tiny_timed * 1e3)
    m[train_key("lightning_fixed_ms_per_step")] = fixed_ms
    m[train_key("lightning_overhead_predicted")] = 1 + fixed_ms / m[train_key("bare_step_ms")]
    run.details[train_window(tiny=True)] = r
