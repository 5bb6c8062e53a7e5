"""The Lightning module: the paper's optimizer recipe, checkpoints that describe themselves,
and the sparsity penalty driving gates down, each through a real Trainer."""

from functools import partial

import pytorch_lightning as pl
import torch

from repvgg_lab.data import DigitsDataModule
from repvgg_lab.lit import ClassifierModule
from repvgg_lab.lit.module import param_groups
from repvgg_lab.lit.schedules import cosine
from repvgg_lab.models import create_model
from repvgg_lab.models.gates import gate_parameters


def fit(module: ClassifierModule, steps: int, batch_size: int = 16) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=DigitsDataModule(img_size=16, batch_size=batch_size))
    return trainer


def test_no_weight_decay_on_bn_bias_or_gates() -> None:
    net = create_model("repvgg_a0", num_classes=10, gate=True)
    decay, no_decay = param_groups(net, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 4 or p.ndim == 2 for p in decay["params"])
    ids = {id(p) for p in no_decay["params"]}
    bn = net.stem.conv_kxk.bn
    assert {id(bn.weight), id(bn.bias), id(net.head.fc.bias), id(net.stem.gate)} <= ids
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))


def test_learning_rate_scales_with_the_global_batch() -> None:
    module = ClassifierModule(
        "repvgg_a0",
        num_classes=10,
        input_size=16,
        optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=1e-4),
        scheduler=partial(cosine, warmup_epochs=0),
    )
    trainer = fit(module, steps=1, batch_size=32)
    optimizer = trainer.optimizers[0]
    assert optimizer.param_groups[0]["initial_lr"] == 0.1 * 32 / 256
    assert optimizer.param_groups[0]["momentum"] == 0.9


def test_hyper_parameters_are_plain_and_name_the_architecture(tmp_path) -> None:
    module = ClassifierModule(
        "repvgg_a0", num_classes=10, input_size=16, model_kwargs={"gate": True}
    )
    trainer = fit(module, steps=1)
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    ckpt = torch.load(tmp_path / "x.ckpt", weights_only=True)  # refuses any non-plain object
    hp = ckpt["hyper_parameters"]
    assert (hp["model_name"], hp["num_classes"], hp["model_kwargs"]) == (
        "repvgg_a0",
        10,
        {"gate": True},
    )


def test_sparsity_penalty_shrinks_the_gates() -> None:
    def gate_l1(sparsity: float) -> float:
        torch.manual_seed(0)
        module = ClassifierModule(
            "repvgg_a0",
            num_classes=10,
            input_size=16,
            model_kwargs={"gate": True},
            optimizer=partial(torch.optim.SGD, lr=0.1),
            lr_batch_reference=None,
            sparsity=sparsity,
        )
        fit(module, steps=5)
        return float(sum(g.abs().sum() for g in gate_parameters(module.net)))

    assert gate_l1(0.05) < gate_l1(0.0) - 1.0
