"""The Lightning module: the paper's optimizer recipe, checkpoints that describe themselves,
and the sparsity penalty driving gates down, each through a real Trainer."""

from functools import partial

import pytest
import pytorch_lightning as pl
import torch

from repvgg_lab.data import DigitsDataModule
from repvgg_lab.lit import ClassifierModule
from repvgg_lab.lit.module import param_groups
from repvgg_lab.lit.schedules import cosine
from repvgg_lab.models import create_model
from repvgg_lab.prune.gates import gate_parameters


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


def _student_and_teacher(distill: float, seed: int = 0):
    torch.manual_seed(seed)
    teacher = create_model("repvgg_a0", num_classes=10)  # train mode: the module must fix it
    student = create_model("repvgg_a0", num_classes=10)
    module = ClassifierModule(
        "repvgg_a0",
        num_classes=10,
        input_size=16,
        optimizer=partial(torch.optim.SGD, lr=0.05),
        lr_batch_reference=None,
        net=student,
        teacher=teacher,
        distill=distill,
        temperature=2.0,
    )
    return module, teacher


def test_distillation_pulls_the_student_towards_the_teacher() -> None:
    x, _ = DigitsDataModule(img_size=16).fixed_batch("val", 32)

    def gap(distill: float) -> float:
        module, teacher = _student_and_teacher(distill)
        fit(module, steps=8)
        with torch.no_grad():
            t = torch.log_softmax(teacher(x) / 2.0, dim=-1)
            s = torch.log_softmax(module.net.eval()(x) / 2.0, dim=-1)
        return float(torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean"))

    assert gap(1.0) < 0.5 * gap(0.0)


def test_the_teacher_is_neither_trained_nor_saved() -> None:
    module, teacher = _student_and_teacher(0.5)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    fit(module, steps=2)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert all(k.startswith(("net.", "accuracy.")) for k in module.state_dict())
    assert "teacher" not in module.hparams
    with pytest.raises(ValueError, match="needs a teacher"):
        ClassifierModule("repvgg_a0", num_classes=10, distill=0.5)
